"""`iter_batches`: decoded, resized batches of Samples, in a seeded order, resumable by batch index.

Images are decoded and resized (bilinear, antialiased) in worker processes when
``num_workers > 0``. Unreadable images are skipped and counted: each is logged as a warning
with its id and reason, the count is summarised at the end, and a dataset that yields no
readable sample is a :class:`~tvprompt.errors.TvpError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ImageError, TvpError, UsageError
from ..imagefit import fit_images
from .sample import Sample

log = logging.getLogger(__name__)
_MAX_LOGGED = 20


@dataclass
class Batch:
    """``images`` (B, 3, S, S) float [0, 1]; ``samples[i].image`` is a view of ``images[i]``.

    ``index`` is the batch's position in the epoch (pass ``start=index + 1`` to resume after it);
    ``skipped`` lists ``(sample id, reason)`` for unreadable samples dropped from this batch.
    """

    samples: list[Sample]
    images: torch.Tensor
    index: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def batch_order(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, drop_last: bool) -> list[list[int]]:
    """Dataset indices of every batch of one epoch; a pure function of its arguments."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def resize_batch(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size), bilinear with antialiasing; unchanged when already that size."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


class _BatchLoader(torch.utils.data.Dataset):
    """Item k = the decoded batch k (run in a worker when num_workers > 0)."""

    def __init__(self, dataset: Any, batches: list[list[int]], start: int, image_size: int | tuple[int, int] | None,
                 fit: str = "squash", resample: str = "bilinear") -> None:
        self.dataset, self.batches, self.start, self.image_size = dataset, batches, start, image_size
        self.fit, self.resample = fit, resample

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __getitem__(self, k: int) -> dict[str, Any]:
        samples, images, skipped = [], [], []
        for i in self.batches[self.start + k]:
            record = self.dataset.sample(i) if hasattr(self.dataset, "sample") else None
            try:
                loaded = self.dataset[i]
            except (ImageError, OSError, ValueError) as e:
                sid = record.id if record is not None else str(i)
                skipped.append((sid, str(e)))
                continue
            samples.append(dataclasses.replace(loaded, image=None))
            images.append(loaded.image.float())
        return {"index": self.start + k, "samples": samples,
                "images": _stack(images, self.image_size, samples, self.fit, self.resample),
                "skipped": skipped}  # fmt: skip


def _stack(images: list[torch.Tensor], size: int | tuple[int, int] | None, samples: list[Sample],
           fit: str = "squash", resample: str = "bilinear") -> torch.Tensor | None:
    """Resize and stack; one batched interpolate when the source sizes agree (CIFAR, most folders)."""
    if not images:
        return None
    if (fit, resample) != ("squash", "bilinear") and size is not None:  # tvprompt.imagefit, as prompt.apply
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if all(im.shape == images[0].shape for im in images):
            return fit_images(torch.stack(images), hw, fit, resample)
        return torch.cat([fit_images(im[None], hw, fit, resample) for im in images])
    if all(im.shape == images[0].shape for im in images):
        return resize_batch(torch.stack(images), size)
    if size is None:
        shapes = sorted({tuple(im.shape) for im in images})
        raise TvpError(f"batch with sample {samples[0].id} mixes image sizes {shapes[:3]}; pass image_size= to resize")
    return torch.cat([resize_batch(im[None], size) for im in images])


def _identity(x: Any) -> Any:
    return x


def default_workers(device: str | torch.device | None = None) -> int:
    """Image-decoding worker processes when none are asked for: on a GPU up to 4 (decoding in the main
    process would leave the device idle while each batch is read); on a CPU none, since workers
    would compete with the model for the same cores."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def iter_batches(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    image_size: int | tuple[int, int] | None = 224,
    fit: str = "squash",
    resample: str = "bilinear",
    start: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
) -> Iterator[Batch]:
    """Batches of ``dataset`` (sized, indexable -> Sample with a loaded image), in a deterministic order.

    The order depends only on ``(len(dataset), batch_size, shuffle, seed, epoch, drop_last)``;
    Images are resized to ``image_size`` (a side, or (h, w)) by :func:`tvprompt.imagefit.fit_images`
    with ``fit`` and ``resample`` (the default squash + bilinear also clamps to [0, 1]).
    ``start`` skips the first ``start`` batches without decoding them (resume). For data
    parallelism, ``batch_size`` is the global batch and process ``rank`` of ``world_size``
    decodes and receives only its share ``global_batch[rank::world_size]`` (same ``index``).
    With workers, batches come in page-locked memory when ``pin_memory`` (default: when CUDA is
    available), so that ``.to(device, non_blocking=True)`` overlaps the copy with compute.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if start < 0:
        raise UsageError(f"start must be >= 0, got {start}")
    n = len(dataset)
    if n == 0:
        raise TvpError(f"{dataset!r}: the dataset is empty")
    batches = batch_order(n, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last)
    if not batches:
        raise TvpError(f"{dataset!r}: {n} sample(s) make no full batch of {batch_size} (drop_last=True)")
    if world_size > 1:
        batches = [b[rank::world_size] for b in batches]
    start = min(start, len(batches))
    loader_ds = _BatchLoader(dataset, batches, start, image_size, fit, resample)
    if num_workers > 0 and len(loader_ds) > 0:
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        items = iter(torch.utils.data.DataLoader(loader_ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                                 collate_fn=_identity, worker_init_fn=_worker_init,
                                                 pin_memory=pin))  # fmt: skip
    else:
        items = (loader_ds[k] for k in range(len(loader_ds)))
    yielded = skipped = 0
    first_reason = ""
    for item in items:
        for sid, reason in item["skipped"]:
            skipped += 1
            first_reason = first_reason or reason
            if skipped <= _MAX_LOGGED:
                log.warning("skipped unreadable sample %s: %s", sid, reason)
        if item["images"] is None:
            continue
        samples = item["samples"]
        for s, img in zip(samples, item["images"], strict=True):
            s.image = img
        yielded += len(samples)
        yield Batch(samples=samples, images=item["images"], index=item["index"], skipped=item["skipped"])
    if skipped:
        log.warning("skipped %d unreadable sample(s) of %d in %r", skipped, skipped + yielded, dataset)
    if yielded == 0 and skipped:
        raise TvpError(f"{dataset!r}: no readable sample ({skipped} skipped; first: {first_reason})")
