"""CLIP image preprocessing with PIL + numpy, equal to transformers' CLIPImageProcessor (PIL backend).

Steps, as configured by preprocessor_config.json: convert to RGB (alpha composited on white),
optional LLaVA pad-to-square, resize the shortest edge, center crop, rescale, normalize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, slots=True)
class ImageProcessorConfig:
    shortest_edge: int | None  # resize target of the shorter side, or None for (height, width)
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int]
    resample: int
    do_resize: bool
    do_center_crop: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    do_convert_rgb: bool
    pad_to_square: bool

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ImageProcessorConfig:
        path = Path(model_dir) / "preprocessor_config.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
        size = raw.get("size", {"shortest_edge": 224})
        size = {"shortest_edge": size} if isinstance(size, int) else size
        crop = raw.get("crop_size", {"height": 224, "width": 224})
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
        is_llava = str(raw.get("image_processor_type", "")).startswith("Llava")
        return cls(
            shortest_edge=size.get("shortest_edge"),
            resize_hw=(size["height"], size["width"]) if "height" in size else None,
            crop_hw=(crop["height"], crop["width"]),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
            do_resize=raw.get("do_resize", True),
            do_center_crop=raw.get("do_center_crop", True),
            do_rescale=raw.get("do_rescale", True),
            rescale_factor=raw.get("rescale_factor", 1 / 255),
            do_normalize=raw.get("do_normalize", True),
            image_mean=tuple(raw.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(raw.get("image_std", OPENAI_CLIP_STD)),
            do_convert_rgb=raw.get("do_convert_rgb", True),
            pad_to_square=is_llava and bool(raw.get("do_pad", False)),
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _pad_to_square(image: np.ndarray, mean: tuple[float, ...]) -> np.ndarray:
    # [H, W, C] uint8 -> [S, S, C], centred on a background of the mean color
    height, width, channels = image.shape
    side = max(height, width)
    out = np.empty((side, side, channels), dtype=image.dtype)
    out[:] = np.array([int(m * 255) for m in mean], dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def _resize_hw(cfg: ImageProcessorConfig, height: int, width: int) -> tuple[int, int]:
    if cfg.shortest_edge is None:
        return cfg.resize_hw
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(image: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    # [H, W, C]; zero-pads first when the image is smaller than the crop
    height, width = image.shape[:2]
    crop_h, crop_w = crop_hw
    if height < crop_h or width < crop_w:
        new_h, new_w = max(height, crop_h), max(width, crop_w)
        padded = np.zeros((new_h, new_w, image.shape[2]), dtype=image.dtype)
        pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
        padded[pad_top : pad_top + height, pad_left : pad_left + width] = image
        image, height, width = padded, new_h, new_w
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def preprocess_image(image: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    # -> [3, H, W] float32
    pixels = np.asarray(_to_rgb(image) if cfg.do_convert_rgb else image)  # [H, W, C] uint8
    if cfg.pad_to_square:
        pixels = _pad_to_square(pixels, cfg.image_mean)
    if cfg.do_resize:
        height, width = _resize_hw(cfg, *pixels.shape[:2])
        pixels = np.asarray(Image.fromarray(pixels).resize((width, height), resample=cfg.resample))
    if cfg.do_center_crop:
        pixels = _center_crop(pixels, cfg.crop_hw)
    out = pixels.astype(np.float32)
    if cfg.do_rescale:
        out = (pixels.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        mean = np.array(cfg.image_mean, dtype=np.float32)
        std = np.array(cfg.image_std, dtype=np.float32)
        out = (out - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_images(images: list[Image.Image], model_dir: str | Path) -> torch.Tensor:
    """-> pixel_values [N, 3, H, W] fp32, as transformers' image processor of `model_dir` makes them."""
    cfg = ImageProcessorConfig.from_dir(model_dir)
    return torch.from_numpy(np.stack([preprocess_image(image, cfg) for image in images]))
