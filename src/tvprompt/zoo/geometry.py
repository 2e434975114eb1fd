"""How a model sees the prompt: the width of the prompt's border in the vision tower's patches.

A padding prompt of width ``p`` on a ``size``-pixel image is resized with the whole image to the
tower's input ``S``; the border is then ``p · S / size`` pixels, i.e. ``p · S / (size · patch)``
patches per side. Below one patch every border patch mixes prompt and image pixels. Real MLLMs at
p = 30 on 224 px: ViT-g/14 at 224 px (BLIP-2, InstructBLIP, MiniGPT-4) 2.1 patches, ViT-L/14 at
336 px (LLaVA-1.5) 3.2, CLIP ViT-B/32 at 224 px 0.9.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError

MIN_BORDER_PATCHES = 1.5  # what every zoo MLLM must see (docs/shapeworld-and-zoo.md)


def border_patches(input_size: int, patch_size: int, width: int = 30, size: int = 224) -> float:
    """Patches per side that a width-``width`` border on a ``size`` px prompt covers at
    ``input_size``/``patch_size``."""
    if input_size < 1 or patch_size < 1 or size < 1 or width < 0:
        raise UsageError("border_patches: sizes must be positive and the width >= 0")
    return width * input_size / (size * patch_size)


def vision_geometry(config: dict[str, Any], where: str = "config.json") -> tuple[int, int]:
    """(input size, patch size) of the vision tower in a transformers ``config.json`` dict."""
    vision = config.get("vision_config", config)
    try:
        size, patch = vision["image_size"], vision["patch_size"]
    except KeyError as e:
        raise UsageError(f"{where}: vision_config has no {e.args[0]}; is this a vision-language checkpoint?") from None
    size = size[0] if isinstance(size, list | tuple) else size
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    return int(size), int(patch)


def checkpoint_border_patches(directory: str | Path, width: int = 30, size: int = 224) -> float:
    """Border patches per side of a checkpoint folder, from its ``config.json``."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read the model config ({e})") from None
    return border_patches(*vision_geometry(config, str(path)), width=width, size=size)
