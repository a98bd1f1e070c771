"""Triton adapter of the visual step; the logic is llm_core.serving.visual."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from llm_core.serving.metrics import VISUAL_METRICS
from llm_core.serving.settings import load_settings, model_parameters
from llm_core.serving.triton_bridge import (
    PbMetricsSink,
    end_crash_reports,
    error_response,
    make_response,
    request_inputs,
    setup_logging,
)
from llm_core.serving.visual import VisualService
from llm_core.serving.watchdog import exit_with_parent

_INPUTS = ("pixel_values", "image_md5")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        setup_logging()
        exit_with_parent()
        settings = load_settings(model_parameters(args["model_config"]))
        # Metrics are updated only here, in execute (one thread per stub).
        self.service = VisualService(settings, PbMetricsSink(pb_utils, VISUAL_METRICS))

    def execute(self, requests: list) -> list:
        try:
            batch = [request_inputs(request, _INPUTS) for request in requests]
            embeds = self.service.run(batch)
        except Exception as exc:  # noqa: BLE001 - fail this batch, keep the stub alive
            return [error_response(pb_utils, f"visual failed: {type(exc).__name__}: {exc}") for _ in requests]
        return [make_response(pb_utils, {"image_embeds": e}) for e in embeds]

    def finalize(self) -> None:
        end_crash_reports()
