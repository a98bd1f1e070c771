"""Triton adapter of the embedding model (non-decoupled, dynamically batched); the logic is
llm_core.serving.embedding."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from llm_core.serving.embedding import EmbeddingService, load_embedding_settings
from llm_core.serving.health import HealthWriter, watch_engine
from llm_core.serving.settings import load_settings, model_parameters
from llm_core.serving.triton_bridge import (
    end_crash_reports,
    error_response,
    make_response,
    request_inputs,
    setup_logging,
)
from llm_core.serving.watchdog import exit_with_parent


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        setup_logging()
        exit_with_parent()
        parameters = model_parameters(args["model_config"])
        options = load_embedding_settings(parameters)
        self.engine = None
        if options.enabled:
            from llm_core.engine import Engine

            self.engine = Engine(load_settings(parameters).engine)
            watch_engine(self.engine, HealthWriter(model="embedding"))  # the supervisor's readiness
        self.service = EmbeddingService(self.engine, options.pooling)

    def execute(self, requests: list) -> list:
        batch = [request_inputs(request, ("text_input",)) for request in requests]
        try:
            results = self.service.run(batch)
        except Exception as exc:  # noqa: BLE001 - fail this batch, keep the stub alive
            return [error_response(pb_utils, f"embedding failed: {type(exc).__name__}: {exc}") for _ in requests]
        return [
            error_response(pb_utils, r) if isinstance(r, str) else make_response(pb_utils, {"embedding": r})
            for r in results
        ]

    def finalize(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        end_crash_reports()
