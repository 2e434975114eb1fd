"""Load a checkpoint's HF image processor for parity tests, with or without torchvision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_image_processor(directory: str | Path) -> Any:
    """``AutoImageProcessor`` when it loads; else the PIL class of the saved ``image_processor_type``.

    Some transformers 5.x releases make ``AutoImageProcessor`` insist on torchvision; the PIL
    implementation (``<Type>Pil``) is the reference the adapters are documented against anyway.
    """
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(str(directory))
    except ImportError:
        config = json.loads((Path(directory) / "preprocessor_config.json").read_text(encoding="utf-8"))
        name = config["image_processor_type"]
        cls = getattr(transformers, f"{name}Pil", None)
        if cls is None:
            raise
        return cls.from_pretrained(str(directory))
