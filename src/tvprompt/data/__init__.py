"""Data: readers for local datasets, splits, subsampling, corruptions and batching.

    ds = open_dataset(load_task("cifar10"), "~/data", "train", seed=0, fraction=0.1)
    for batch in iter_batches(ds, 16, shuffle=True, seed=0, image_size=224):
        batch.images  # (B, 3, 224, 224) float [0, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batching import Batch, default_workers, iter_batches
    from .dataset import TaskDataset, open_dataset
    from .readers import RawSplit, Reader, detect_format, get_reader, list_formats, register_reader
    from .sample import ArrayImage, ImageRef, Sample, load_sample_image

# Names resolve on first use: light submodules (e.g. ``shapeworld``, which the CLI reads while
# building its parser) then load without importing torch.
_LAZY = {
    "Batch": ".batching", "iter_batches": ".batching", "default_workers": ".batching",
    "TaskDataset": ".dataset", "Dataset": ".dataset", "open_dataset": ".dataset",
    "RawSplit": ".readers", "Reader": ".readers", "detect_format": ".readers", "get_reader": ".readers",
    "list_formats": ".readers", "register_reader": ".readers",
    "ArrayImage": ".sample", "ImageRef": ".sample", "Sample": ".sample", "load_sample_image": ".sample",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), "TaskDataset" if name == "Dataset" else name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArrayImage",
    "Batch",
    "Dataset",
    "ImageRef",
    "RawSplit",
    "Reader",
    "Sample",
    "TaskDataset",
    "detect_format",
    "get_reader",
    "default_workers",
    "iter_batches",
    "list_formats",
    "load_sample_image",
    "open_dataset",
    "register_reader",
]
