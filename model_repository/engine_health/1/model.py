"""Readiness sentinel: loads only while the supervisor says the engine is ready (see config.pbtxt)."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.state = params.get("engine_state", {}).get("string_value", "ready")
        if self.state != "ready":
            raise RuntimeError(f"not ready: {self.state}")

    def execute(self, requests: list) -> list:
        out = pb_utils.Tensor("engine_state", np.array([self.state.encode()], np.object_))
        return [pb_utils.InferenceResponse(output_tensors=[out]) for _ in requests]
