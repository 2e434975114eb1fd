"""`open_dataset`: a task's split of a local dataset as a sized, indexable dataset of Samples."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TvpError, UsageError
from ..tasks import TaskSpec, load_task, normalize_answer, refine_name
from .readers import RawSplit, Reader, detect_format, get_reader
from .sample import Sample, load_sample_image
from .splits import SALT_HOLDOUT, SALT_VAL, split_off, subsample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VAL_NAMES = ("val", "validation", "valid")  # what datasets call their validation split
HOLDOUT_SEED = 0


class TaskDataset(torch.utils.data.Dataset):
    """Samples of one split; ``ds[i]`` is a :class:`Sample` whose ``image`` is a loaded (3, h, w) tensor.

    ``ds.spec`` is the task with its choices resolved (from the data when the YAML lists none).

    ``ds.sample(i)`` gives the record without reading the image. A corruption, when set, is
    applied on the fly with a generator seeded by ``(seed, i)``, so a run is repeatable.
    """

    def __init__(
        self,
        spec: TaskSpec,
        samples: list[Sample],
        *,
        split: str,
        source: str,
        seed: int = 0,
        corruption: str | None = None,
        severity: int = 0,
        corruption_strength: str = "cifar10c",
        choices: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.samples = samples
        self.split = split
        self.source = source
        self.seed = seed
        self.corruption = corruption
        self.severity = severity
        self.corruption_strength = corruption_strength
        self.choices = choices if choices is not None else spec.choices

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        extra = f", corruption={self.corruption}/{self.severity}" if self.corruption else ""
        return f"TaskDataset({self.spec.name}, {self.split}, n={len(self)}, source={self.source}{extra})"

    def sample(self, index: int) -> Sample:
        return self.samples[index]

    def load_image(self, index: int) -> torch.Tensor:
        image = load_sample_image(self.samples[index].image)
        if self.corruption and self.severity > 0:
            from .corruptions import corrupt

            rng = np.random.default_rng([self.seed, index, 0xC0])
            image = corrupt(image, self.corruption, self.severity, rng, self.corruption_strength)
        return image

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return dataclasses.replace(self.samples[index], image=self.load_image(index))


def _resolve(name: Any, available: list[str]) -> str | None:
    names = name if isinstance(name, list) else [name]
    return next((n for n in names if n is not None and n in available), None)


def _map_labels(spec: TaskSpec, samples: list[Sample], choices: list[str] | None, where: str) -> None:
    """Give every sample ``label`` = its index in the task's choices and ``answer`` = that choice."""
    if spec.kind == "open" or choices is None:
        return
    if spec.classes is not None and choices is spec.choices:
        lookup = {str(c): i for i, c in enumerate(spec.classes)}
        key = str
    else:
        lookup = {}
        for i, c in enumerate(choices):
            lookup.setdefault(refine_name(c), i)
            lookup.setdefault(normalize_answer(c), i)
        key = refine_name
    missing: list[str] = []
    fixed = choices is spec.choices  # the task lists its answers: per-sample answer sets must stay within them
    allowed = {f(c) for c in choices for f in (refine_name, normalize_answer)}
    for s in samples:
        if s.choices:  # per-sample answer sets keep their own labels
            outside = refine_name(s.answer) not in allowed and normalize_answer(s.answer) not in allowed
            if fixed and outside and s.answer not in missing:
                missing.append(s.answer)
            continue
        i = lookup.get(key(s.answer))
        if i is None and key is refine_name:
            i = lookup.get(normalize_answer(s.answer))
        if i is None:
            if s.answer not in missing:
                missing.append(s.answer)
            continue
        s.label, s.answer = i, choices[i]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise TvpError(
            f"{where}: answer(s) {shown} not among task {spec.name}'s {len(choices)} choices; "
            "is the data for this task? (else list them under choices or classes in the task YAML)"
        )


def open_dataset(
    spec: TaskSpec | str | os.PathLike,
    path: str | os.PathLike,
    split: str,
    *,
    seed: int = 0,
    fraction: float = 1.0,
    val_fraction: float = 0.1,
    corruption: str | None = None,
    severity: int = 0,
    corruption_strength: str = "cifar10c",
    format: str | None = None,
    format_options: dict[str, Any] | None = None,
    download: bool = False,
) -> TaskDataset:
    """One split (train / val / test) of the dataset at ``path`` for ``spec``.

    The reader is detected from the layout (``format=`` forces one). Where the dataset has no
    val split, a stratified ``val_fraction`` of train seeded by ``seed`` becomes val (and leaves
    train). Where train and test name one pool, a fixed-seed stratified ``spec.holdout`` share
    of it is test. ``fraction`` < 1 keeps a stratified seeded share (at least one per class).
    ``format_options`` override the task's reader options (e.g. ``{"image_dir": "/coco/val2014"}``).
    ``corruption`` / ``severity`` / ``corruption_strength`` (``cifar10c`` or ``imagenetc`` constants):
    see :mod:`tvprompt.data.corruptions`.
    """
    spec = load_task(spec)
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.01 <= fraction <= 1.0:
        raise UsageError(f"fraction must be between 0.01 and 1.0, got {fraction}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if corruption:
        from .corruptions import CORRUPTIONS, STRENGTHS

        if corruption_strength not in STRENGTHS:
            raise UsageError(f"unknown corruption strength {corruption_strength!r}; choose from {', '.join(STRENGTHS)}")
        if corruption not in CORRUPTIONS:
            raise UsageError(f"unknown corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)}")
        if not 1 <= severity <= 5:
            raise UsageError(f"corruption severity must be 1..5, got {severity}")
    root = Path(path).expanduser()
    fmt = format or spec.format
    if download:
        if fmt is None:
            raise UsageError("download=True needs format= or a task with a format")
        reader = get_reader(fmt)
        for name in {spec.splits.get("train"), spec.splits.get("test")} - {None}:
            reader.download(root, name if isinstance(name, str) else name[0])
    fmt = format or detect_format(root, spec.format)
    reader = get_reader(fmt)
    options = {**spec.format_options, **(format_options or {})}
    available = reader.splits(root, options)
    source = f"{root} ({fmt})"
    names = {s: _resolve(spec.splits.get(s), available) for s in SPLITS}
    for s in ("train", "test"):
        if names[s] is None and "all" in available:
            names[s] = "all"
    if names["val"] is None:  # the data's own val split beats carving one from train (unless it is the test set)
        names["val"] = next((v for v in VAL_NAMES if v in available and v != names["test"]), None)
    if names[split] is None and split != "val":
        want = spec.splits.get(split)
        raise TvpError(f"{source}: no {split} split {want!r} (found {', '.join(available) or 'none'})")

    cache: dict[str, RawSplit] = {}

    def read(name: str) -> RawSplit:
        if name not in cache:
            cache[name] = reader.read(root, name, options)
        return cache[name]

    choices = _dataset_choices(spec, reader, root, options, available, read)
    one_pool = names["train"] is not None and names["train"] == names["test"]

    def pool(name: str) -> list[Sample]:  # readers build fresh Samples on every read: safe to update in place
        samples = read(name).samples
        _map_labels(spec, samples, choices, f"{source} split {name}")
        return samples

    if split == "test":
        samples = pool(names["test"])
        if one_pool:
            samples = split_off(samples, spec.holdout, HOLDOUT_SEED, SALT_HOLDOUT)[1]
    elif split == "val" and names["val"] is not None:
        samples = pool(names["val"])
    else:
        if names["train"] is None:
            raise TvpError(f"{source}: no train split to carve val from (found {', '.join(available)})")
        samples = pool(names["train"])
        if one_pool:
            samples = split_off(samples, spec.holdout, HOLDOUT_SEED, SALT_HOLDOUT)[0]
        if names["val"] is None:
            rest, carved = split_off(samples, val_fraction, seed, SALT_VAL)
            samples = carved if split == "val" else rest
    samples = subsample(samples, fraction, seed)
    if not samples:
        raise TvpError(f"{source}: split {split} of task {spec.name} is empty")
    if choices is not spec.choices:  # choices came from the data: samples carry them, and so does ds.spec
        for s in samples:
            s.choices = s.choices or choices
        spec = dataclasses.replace(spec, choices=list(choices), classes=None, refine_choices=False)
    log.info("%s: %s split %s, %d samples", spec.name, source, split, len(samples))
    return TaskDataset(spec, samples, split=split, source=source, seed=seed, corruption=corruption,
                       severity=severity, corruption_strength=corruption_strength, choices=choices)  # fmt: skip


def _dataset_choices(
    spec: TaskSpec, reader: Reader, root: Path, options: dict[str, Any], available: list[str],
    read: Callable[[str], RawSplit],
) -> list[str] | None:  # fmt: skip
    """The task's choices, or (when the spec lists none) the dataset's class names, refined."""
    if spec.choices is not None or spec.kind == "open":
        return spec.choices
    classes = None
    for name in available:
        classes = read(name).classes
        if classes is not None:
            break
    if classes is None:  # answers seen across every split, sorted, so all splits agree
        answers = {s.answer for name in available for s in read(name).samples if not s.choices}
        if not answers:
            return None
        classes = sorted(answers, key=lambda a: (len(a), a) if a.isdigit() else (0, a))
    return [refine_name(c) for c in classes] if spec.refine_choices else list(classes)
