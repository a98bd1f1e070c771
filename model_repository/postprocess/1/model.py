"""Triton adapter of the postprocess step; the logic is llm_core.serving.postprocess."""

from __future__ import annotations

import json
import time

import triton_python_backend_utils as pb_utils

from llm_core.serving.cancel_relay import CancelRelayClient
from llm_core.serving.postprocess import CancelPolls, cancelled_outputs, parse_postprocess_input, postprocess_outputs
from llm_core.serving.triton_bridge import end_crash_reports, input_names, make_response, request_inputs, setup_logging
from llm_core.serving.watchdog import exit_with_parent


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        setup_logging()
        exit_with_parent()
        self.inputs = input_names(json.loads(args["model_config"]))
        self.relay = CancelRelayClient()
        self.cancel_polls = CancelPolls()

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            item = parse_postprocess_input(request_inputs(request, self.inputs))
            polled = self.cancel_polls.due(item.request_id, bool(item.finish_reason), time.monotonic())
            if polled and request.is_cancelled():
                # Inside an ensemble only this step sees the client's cancellation: stop the engine.
                if self.relay.abort(item.request_id):
                    pb_utils.Logger.log_info(f"client cancelled; aborting {item.request_id}")
                responses.append(make_response(pb_utils, cancelled_outputs()))
                continue
            try:
                outputs = postprocess_outputs(item)
            except Exception as exc:  # noqa: BLE001 - an error response would wedge the ensemble request
                pb_utils.Logger.log_error(f"postprocess of {item.request_id} failed: {exc!r}")
                outputs = cancelled_outputs()
            responses.append(make_response(pb_utils, outputs))
        return responses

    def finalize(self) -> None:
        self.relay.close()
        end_crash_reports()
