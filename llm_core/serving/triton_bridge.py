"""Conversions between pb_utils objects and plain numpy/dicts, shared by the model.py adapters.

The `triton_python_backend_utils` module is passed in (`pb`), never imported here, so this
module imports anywhere and is tested with a stand-in.
"""

from __future__ import annotations

import faulthandler
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from llm_core.serving.metrics import COUNTER, GAUGE, HISTOGRAM, MetricSpec

log = logging.getLogger("llm_core.serving")


def input_names(model_config: Mapping[str, Any]) -> list[str]:
    return [spec["name"] for spec in model_config.get("input", [])]


def request_inputs(request: Any, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The inputs among `names` present in `request` (optional ones may be absent) as numpy arrays. One pass
    over `request.inputs()`: pb_utils.get_input_tensor_by_name builds the whole list of input tensors on every
    call, so asking it for each of postprocess's 9 inputs made 81 tensor objects per response (py-spy, W1 on
    one H200: a fifth of postprocess's time)."""
    wanted = set(names)
    return {tensor.name(): tensor.as_numpy() for tensor in request.inputs() if tensor.name() in wanted}


def request_parameters(request: Any) -> dict[str, Any]:
    try:
        params = json.loads(request.parameters() or "{}")
    except (ValueError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


def make_response(pb: Any, outputs: Mapping[str, np.ndarray]) -> Any:
    return pb.InferenceResponse(output_tensors=[pb.Tensor(name, value) for name, value in outputs.items()])


def error_response(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


class ModelCallError(RuntimeError):
    """Another model of the repository answered a BLS request with an error (its message)."""


def call_model(pb: Any, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One request to another model of the repository (BLS, one response, from `execute`) -> its `outputs`."""
    request = pb.InferenceRequest(
        model_name=model,
        inputs=[pb.Tensor(name, value) for name, value in inputs.items()],
        requested_output_names=list(outputs),
    )
    response = request.exec()
    if response.has_error():
        raise ModelCallError(response.error().message())
    return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class PbMetricsSink:
    """A MetricsSink over pb_utils.MetricFamily objects (one unlabeled metric per spec)."""

    def __init__(self, pb: Any, specs: Sequence[MetricSpec], labels: Mapping[str, str] | None = None) -> None:
        kinds = {COUNTER: pb.MetricFamily.COUNTER, GAUGE: pb.MetricFamily.GAUGE}
        self.families = []
        self.metrics: dict[str, Any] = {}
        for spec in specs:
            if spec.kind == HISTOGRAM:
                family = pb.MetricFamily(name=spec.name, description=spec.description, kind=pb.MetricFamily.HISTOGRAM)
                metric = family.Metric(labels=dict(labels or {}), buckets=list(spec.buckets))
            else:
                family = pb.MetricFamily(name=spec.name, description=spec.description, kind=kinds[spec.kind])
                metric = family.Metric(labels=dict(labels or {}))
            self.families.append(family)
            self.metrics[spec.name] = metric

    def set(self, name: str, value: float) -> None:
        self.metrics[name].set(value)

    def increment(self, name: str, delta: float) -> None:
        self.metrics[name].increment(delta)

    def observe(self, name: str, value: float) -> None:
        self.metrics[name].observe(value)


def setup_logging(level: int = logging.INFO) -> None:
    """Log llm_core's messages to the stub's stderr (Triton shows it in the server log); a crash in native
    code (a segfault, an abort) prints every thread's Python stack there too."""
    faulthandler.enable()
    logger = logging.getLogger("llm_core")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


def end_crash_reports() -> None:
    """Call last in finalize(): the 2.51 stub's own teardown segfaults after it (no Python frame, exit
    code still 0), which faulthandler would report as a crash on every clean shutdown."""
    faulthandler.disable()
