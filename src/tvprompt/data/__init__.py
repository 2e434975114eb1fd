"""Data: readers for local datasets, splits, subsampling, corruptions and batching.

    ds = open_dataset(load_task("cifar10"), "~/data", "train", seed=0, fraction=0.1)
    for batch in iter_batches(ds, 16, shuffle=True, seed=0, image_size=224):
        batch.images  # (B, 3, 224, 224) float [0, 1]
"""

from __future__ import annotations

from .batching import Batch, iter_batches
from .dataset import TaskDataset, open_dataset
from .readers import RawSplit, Reader, detect_format, get_reader, list_formats, register_reader
from .sample import ArrayImage, ImageRef, Sample, load_sample_image

Dataset = TaskDataset

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
    "iter_batches",
    "list_formats",
    "load_sample_image",
    "open_dataset",
    "register_reader",
]
