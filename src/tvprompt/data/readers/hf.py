"""HF ``datasets`` saved with ``save_to_disk``. Needs the optional ``datasets`` package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import TvpError, UsageError
from ...imageio import pil_to_tensor, to_rgb
from ..sample import Sample
from . import RawSplit, Reader, register_reader


def _datasets() -> Any:
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError:
        raise UsageError(
            "reading a saved HF dataset needs the `datasets` package (pip install 'tvprompt[hf]'), "
            "or export it to a JSONL manifest"
        ) from None
    return datasets


@dataclass(frozen=True)
class HFImage:
    """Cell ``column`` of row ``index`` of an HF dataset (decoded lazily)."""

    table: Any
    index: int
    column: str

    def load(self) -> torch.Tensor:
        return pil_to_tensor(to_rgb(self.table[self.index][self.column]))

    def __repr__(self) -> str:
        return f"HFImage(index={self.index}, column={self.column!r})"


@register_reader
class HFDiskReader(Reader):
    """Columns: ``image`` (or ``img``); ``label`` (a ClassLabel) or ``answer``; optional ``question``, ``text``.

    ``format_options``: ``image_column``; ``label_column`` (a ClassLabel or integer column, e.g.
    CIFAR-100's ``fine_label``) with ``label_names`` (the class of each integer, for a plain int
    column such as HatefulMemes' ``label``: ``[no, yes]``); ``answer_column`` (a text column);
    ``where: {column: value}`` keeps matching rows only (e.g. ``{"category": "adversarial"}`` for a
    POPE export with all three subsets).
    """

    name = "hf_disk"
    priority = 20

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (
            (path / "dataset_dict.json").exists()
            or ((path / "state.json").exists() and (path / "dataset_info.json").exists())
        )

    def _load(self, path: Path) -> Any:
        try:
            return _datasets().load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise TvpError(f"{path}: not a dataset saved with save_to_disk ({e})") from None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        ds = self._load(path)
        return sorted(ds.keys()) if hasattr(ds, "keys") else ["all"]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        ds = self._load(path)
        if hasattr(ds, "keys"):
            if split not in ds:
                raise TvpError(f"{path}: no split {split!r} (found {', '.join(sorted(ds.keys()))})")
            ds = ds[split]
        cols = set(ds.column_names)
        for key in ("image_column", "label_column", "answer_column"):
            if options.get(key) is not None and options[key] not in cols:
                raise TvpError(f"{path}: format_options.{key} {options[key]!r} is not a column "
                               f"(columns: {', '.join(sorted(cols))})")
        image_col = options.get("image_column") or next((c for c in ("image", "img") if c in cols), None)
        if image_col is None:
            raise TvpError(f"{path}: no image column (looked for image, img); set format_options.image_column")
        answer_col = options.get("answer_column")
        label_col = None if answer_col else options.get("label_column") or ("label" if "label" in cols else None)
        classes = _class_names(ds, label_col, options.get("label_names"), path)
        if classes is None:
            label_col, answer_col = None, answer_col or ("answer" if "answer" in cols else None)
        if classes is None and answer_col is None:
            raise TvpError(f"{path}: needs a ClassLabel column 'label' or a text column 'answer'; for other columns "
                           "set format_options.label_column (+ label_names for plain integers) or answer_column")
        where = options.get("where") or {}
        if not isinstance(where, dict) or not set(where) <= cols:
            raise TvpError(f"{path}: format_options.where must map existing columns to values, got {where!r}")
        meta_rows = ds.remove_columns([image_col])
        samples = []
        for i, row in enumerate(meta_rows):
            if any(row.get(k) != v for k, v in where.items()):
                continue
            label = None
            if classes is not None:
                label = int(row[label_col])
                if not 0 <= label < len(classes):
                    raise TvpError(f"{path}: row {i}: {label_col} {label} outside its {len(classes)} class names")
            samples.append(
                Sample(
                    id=str(row.get("id", f"{split}/{i}")),
                    image=HFImage(ds, i, image_col),
                    answer=classes[label] if label is not None else str(row[answer_col]),
                    question=row.get("question"),
                    text=row.get("text"),
                    label=label,
                )
            )
        return RawSplit(samples, classes)


def _class_names(ds: Any, column: str | None, names: Any, path: Path) -> list[str] | None:
    """The class names of an integer label column: ``label_names`` when given, else its ClassLabel names."""
    if column is None:
        return None
    if names is not None:
        if isinstance(names, dict):  # {0: no, 1: yes}
            names = [names[k] for k in sorted(names, key=int)]
        if not isinstance(names, list) or not names:
            raise TvpError(f"{path}: format_options.label_names must be a list of class names, got {names!r}")
        return [str(n) for n in names]
    feature = ds.features.get(column)
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    if column != "label":  # named explicitly: a plain integer column needs its names
        raise TvpError(f"{path}: column {column!r} has no class names; set format_options.label_names")
    return None
