"""Named numpy arrays as tritonclient gRPC inputs (the same objects serve the asyncio client)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def infer_inputs(arrays: Mapping[str, np.ndarray]) -> list:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs
