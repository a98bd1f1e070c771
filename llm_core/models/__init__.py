"""Models on the torch path: config parsing, Llama/Qwen2, CLIP vision + LLaVA, weight loading."""

from llm_core.models.config import ModelConfig, RopeScaling, VisionConfig, load_model_config
from llm_core.models.image_processing import preprocess_images
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.llava import VisionEncoder
from llm_core.models.loader import build_model, load_weights

__all__ = [
    "LlamaForCausalLM",
    "ModelConfig",
    "RopeScaling",
    "VisionConfig",
    "VisionEncoder",
    "build_model",
    "load_model_config",
    "load_weights",
    "preprocess_images",
]
