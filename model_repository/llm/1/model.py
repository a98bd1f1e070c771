"""Triton adapter of the llm step (decoupled); the logic is llm_core.serving.llm_service.

execute() only hands each request to LlmService.submit and returns; LlmService's sender thread
streams the responses through the pb_utils response senders and ends every request with
TRITONSERVER_RESPONSE_COMPLETE_FINAL.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from llm_core.engine import Engine
from llm_core.serving.cancel_relay import CancelRelayServer
from llm_core.serving.health import HealthWriter, server_restarts, stub_reloads
from llm_core.serving.llm_io import LlmResponse, requested_outputs, response_arrays
from llm_core.serving.llm_service import LlmService
from llm_core.serving.metrics import LLM_METRICS, EngineMetrics
from llm_core.serving.settings import load_settings, model_parameters
from llm_core.serving.triton_bridge import PbMetricsSink, end_crash_reports, input_names, request_inputs, setup_logging
from llm_core.serving.watchdog import exit_with_parent

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Handle:
    """A request's response sender and the outputs it asked for (Triton lists every output when a
    client names none)."""

    __slots__ = ("sender", "outputs")

    def __init__(self, request) -> None:
        self.sender = request.get_response_sender()
        self.outputs = requested_outputs(request.requested_output_names())


class _Transport:
    """LlmService's view of pb_utils response senders (used from the sender thread only)."""

    def send(self, handle: _Handle, response: LlmResponse | None, final: bool) -> None:
        if response is None:
            handle.sender.send(flags=_FINAL)
            return
        tensors = [pb_utils.Tensor(name, array) for name, array in response_arrays(response, handle.outputs)]
        handle.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=_FINAL if final else 0)

    def send_error(self, handle: _Handle, message: str, retryable: bool = False) -> None:
        # UNAVAILABLE: HTTP 503 / gRPC UNAVAILABLE, which clients retry; the rest are client errors (400).
        code = pb_utils.TritonError.UNAVAILABLE if retryable else pb_utils.TritonError.INVALID_ARG
        error = pb_utils.TritonError(message, code)
        handle.sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=_FINAL)

    def is_cancelled(self, handle: _Handle) -> bool:
        return handle.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        setup_logging()
        exit_with_parent()
        settings = load_settings(model_parameters(args["model_config"]))
        self.inputs = input_names(json.loads(args["model_config"]))
        self.engine = Engine(settings.engine)
        metrics = EngineMetrics(PbMetricsSink(pb_utils, LLM_METRICS))
        if reloads := stub_reloads():  # counted by the supervisor, which reloaded this model
            metrics.sink.increment("llm_stub_reloads_total", reloads)
        if restarts := server_restarts():  # counted by the launcher, which started this tritonserver again
            metrics.sink.increment("llm_server_restarts_total", restarts)
        self.service = LlmService(
            self.engine,
            _Transport(),
            metrics,
            settings.default_max_tokens,
            health=HealthWriter(),
            max_responses_per_s=settings.stream_responses_per_s,
        )
        self.service.start()
        self.relay = CancelRelayServer(self.service.abort)

    def execute(self, requests: list) -> None:
        for request in requests:
            self.service.submit(_Handle(request), request_inputs(request, self.inputs))
        return None

    def finalize(self) -> None:
        self.relay.close()
        self.engine.shutdown()  # ends every in-flight request ("abort" chunks)
        self.service.stop()
        end_crash_reports()
