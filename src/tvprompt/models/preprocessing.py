"""Differentiable image preprocessing that mirrors a Hugging Face image processor in torch.

HF image processors run on numpy/PIL, so gradients cannot flow through them. Each adapter holds an
:class:`ImagePreprocessing` read from the checkpoint's ``preprocessor_config.json`` (falling back to
the family's defaults), and applies the same steps to [0, 1] tensors with torch ops:

1. resize: either straight to ``size`` or, for CLIP-style processors, the shortest edge to
   ``shortest_edge`` (aspect kept) followed by a centre crop to ``size``;
2. normalise with ``mean`` / ``std``.

Resizing uses ``torch.nn.functional.interpolate(..., antialias=True)``, whose bicubic and bilinear
kernels are PIL's (bicubic with a = -0.5), and the resized image is clamped to [0, 1] as PIL's uint8
image is. The remaining differences against a PIL-based processor are PIL's rounding to uint8 (also
between its horizontal and vertical passes) and its fixed-point arithmetic: on natural images the
result matches to < 0.02 in normalised units (about 1/255 in pixel units; tests allow 0.03). On
white noise, PIL's 8-bit intermediate clips bicubic overshoot, and single values can differ by ~0.15.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TvpError

log = logging.getLogger(__name__)

# PIL.Image.Resampling values as stored in preprocessor configs -> torch interpolate modes.
_PIL_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
_MODES = ("nearest", "bilinear", "bicubic")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How one model turns [0, 1] pixels into its vision input. Frozen: it describes the checkpoint."""

    size: tuple[int, int]  # (h, w) the vision tower takes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"
    shortest_edge: int | None = None  # resize the shortest edge to this, then centre-crop to `size`

    def __post_init__(self) -> None:
        if self.resample not in _MODES:
            raise TvpError(f"image preprocessing: resample {self.resample!r} is not one of {', '.join(_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise TvpError(f"image preprocessing: mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")

    def resize(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 3, *size) in [0, 1] pixel units (not clamped); differentiable."""
        x = pixels01
        h, w = x.shape[-2:]
        if self.shortest_edge is not None:
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(self.shortest_edge * long / short)
            target = (self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)
            x = interpolate(x, target, self.resample)
            th, tw = self.size
            top = max(0, (x.shape[-2] - th) // 2)
            left = max(0, (x.shape[-1] - tw) // 2)
            x = x[..., top : top + th, left : left + tw]
            if tuple(x.shape[-2:]) != tuple(self.size):  # image smaller than the crop: stretch the rest
                x = interpolate(x, self.size, self.resample)
            return x
        return interpolate(x, self.size, self.resample)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, pixels01: torch.Tensor) -> torch.Tensor:
        if pixels01.ndim != 4 or pixels01.shape[1] != 3:
            raise TvpError(f"pixels: expected a (B, 3, H, W) tensor, got shape {tuple(pixels01.shape)}")
        # PIL-based processors hold the resized image as uint8, which clips bicubic overshoot to [0, 1].
        return self.normalize(self.resize(pixels01.float()).clamp(0.0, 1.0))

    @classmethod
    def from_processor_config(cls, config: dict[str, Any], default: ImagePreprocessing) -> ImagePreprocessing:
        """Read an HF image-processor dict; fields it lacks come from ``default``."""
        mean = tuple(config.get("image_mean") or default.mean)
        std = tuple(config.get("image_std") or default.std)
        if config.get("do_normalize") is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        resample = default.resample
        if isinstance(config.get("resample"), int):
            resample = _PIL_RESAMPLE.get(config["resample"], default.resample)
        size, shortest = default.size, default.shortest_edge
        raw = config.get("size")
        if isinstance(raw, int):
            raw = {"height": raw, "width": raw}
        if isinstance(raw, dict):
            if "shortest_edge" in raw and config.get("do_center_crop", True):
                shortest = int(raw["shortest_edge"])
                crop = config.get("crop_size") or {}
                if isinstance(crop, int):
                    crop = {"height": crop, "width": crop}
                size = (int(crop.get("height", shortest)), int(crop.get("width", shortest)))
            elif "height" in raw and "width" in raw:
                size, shortest = (int(raw["height"]), int(raw["width"])), None
        return cls(size=size, mean=mean, std=std, resample=resample, shortest_edge=shortest)  # type: ignore[arg-type]

    def to_processor_config(self) -> dict[str, Any]:
        """The HF image-processor fields this describes (used when saving tiny checkpoints)."""
        pil = {"nearest": 0, "bilinear": 2, "bicubic": 3}[self.resample]
        out: dict[str, Any] = {
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": pil,
            "do_convert_rgb": True,
        }
        if self.shortest_edge is not None:
            out.update(size={"shortest_edge": self.shortest_edge}, do_center_crop=True,
                       crop_size={"height": self.size[0], "width": self.size[1]})
        else:
            out.update(size={"height": self.size[0], "width": self.size[1]}, do_center_crop=False)
        return out


def read_processor_config(directory: str | Path) -> dict[str, Any] | None:
    """The image-processor dict of a local checkpoint directory, or None when it has none."""
    directory = Path(directory)
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TvpError(f"{path}: not valid JSON ({e}); fix or delete the file") from None
        if isinstance(data, dict) and isinstance(data.get("image_processor"), dict):
            data = data["image_processor"]
        if isinstance(data, dict):
            return data
    return None


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
