"""`Sample`: one item of a task, passed between modules (never a tuple)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..imageio import load_image


@runtime_checkable
class ImageRef(Protocol):
    """An image that is not a file on its own (a row of a CIFAR batch, an HF dataset cell)."""

    def load(self) -> torch.Tensor: ...


@dataclass
class Sample:
    """One item. ``image`` is a path, an :class:`ImageRef`, or a loaded (3, h, w) float [0, 1] tensor;
    datasets load it lazily in ``__getitem__``."""

    id: str
    image: Any
    answer: str
    question: str | None = None
    choices: list[str] | None = None  # per-sample answer set (POPE yes/no, manifest lines)
    label: int | None = None  # index into the choices
    text: str | None = None  # text shown in the image (HatefulMemes)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayImage:
    """Row ``index`` of an in-memory uint8 image array, laid out HWC or CHW (``layout``)."""

    array: np.ndarray
    index: int
    layout: str = "HWC"

    def load(self) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(self.array[self.index]))
        if self.layout == "HWC":
            img = img.permute(2, 0, 1)
        return img.float().div_(255.0)

    def __repr__(self) -> str:  # never print the whole array
        return f"ArrayImage(index={self.index}, shape={tuple(self.array.shape[1:])})"


def load_sample_image(image: Any) -> torch.Tensor:
    """Whatever :attr:`Sample.image` holds -> float (3, h, w) in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image))
    if isinstance(image, ImageRef):
        return image.load()
    raise TypeError(f"cannot load an image from {type(image).__name__}")
