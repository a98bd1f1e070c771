"""Triton adapter of the preprocess step; the logic is llm_core.serving.preprocess."""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from llm_core.serving.preprocess import Preprocessor, with_image_embeds
from llm_core.serving.request import InputError
from llm_core.serving.settings import load_settings, model_parameters
from llm_core.serving.triton_bridge import (
    ModelCallError,
    call_model,
    end_crash_reports,
    error_response,
    input_names,
    make_response,
    request_inputs,
    request_parameters,
    setup_logging,
)
from llm_core.serving.watchdog import exit_with_parent


def _encode_images(pixel_values, image_md5):
    """Image embeddings from the visual model (its md5-keyed cache, its batching across requests)."""
    inputs = {"pixel_values": pixel_values, "image_md5": image_md5}
    return call_model(pb_utils, "visual", inputs, ["image_embeds"])["image_embeds"]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        # One prompt per call: the tokenizers pool only adds a hand-off to another core (serving/prompt.py).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        from transformers import AutoTokenizer

        setup_logging()
        exit_with_parent()
        settings = load_settings(model_parameters(args["model_config"]))
        tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        self.preprocessor = Preprocessor(
            settings.model_dir, tokenizer, settings.default_max_tokens, settings.engine.max_model_len
        )
        self.inputs = input_names(json.loads(args["model_config"]))

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                inputs = request_inputs(request, self.inputs)
                outputs = self.preprocessor.run(inputs, request_parameters(request))
                responses.append(make_response(pb_utils, with_image_embeds(outputs, _encode_images)))
            except (InputError, ModelCallError) as exc:
                responses.append(error_response(pb_utils, str(exc)))
            except Exception as exc:  # noqa: BLE001 - never let one request kill the stub
                responses.append(error_response(pb_utils, f"preprocess failed: {type(exc).__name__}: {exc}"))
        return responses

    def finalize(self) -> None:
        end_crash_reports()
