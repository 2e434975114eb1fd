"""JSONL manifests: one object per line, image paths relative to the manifest file.

    {"image": "imgs/0001.png", "answer": "cat", "question": "...", "split": "train",
     "choices": ["cat", "dog"], "text": "...", "id": "0001"}

Only ``image`` and ``answer`` are required. Lines without ``split`` belong to the pool ``all``.
Other keys are kept in ``Sample.meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import TvpError
from ..sample import Sample
from . import RawSplit, Reader, register_reader
from .vqa import _read_jsonl

_KNOWN = {"image", "answer", "question", "split", "choices", "text", "id", "label"}


@register_reader
class ManifestReader(Reader):
    name = "manifest"
    priority = 10

    def _file(self, path: Path) -> Path | None:
        if path.is_file():
            return path if path.suffix.lower() == ".jsonl" else None
        cand = path / "manifest.jsonl"
        return cand if cand.is_file() else None

    def detect(self, path: Path) -> bool:
        return self._file(path) is not None

    def _rows(self, path: Path) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
        file = self._file(path)
        if file is None:
            raise TvpError(f"{path}: not a .jsonl manifest (and no manifest.jsonl inside)")
        return file, _read_jsonl(file)

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        _, rows = self._rows(path)
        return sorted({str(r.get("split", "all")) for _, r in rows})

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        file, rows = self._rows(path)
        samples = []
        for n, row in rows:
            if str(row.get("split", "all")) != split:
                continue
            where = f"{file}:{n}"
            for key in ("image", "answer"):
                if not isinstance(row.get(key), (str, int, float)) or isinstance(row.get(key), bool):
                    raise TvpError(f"{where}: field {key!r} is missing or not a string")
            choices = row.get("choices")
            if choices is not None and (not isinstance(choices, list) or not choices):
                raise TvpError(f"{where}: field 'choices' must be a non-empty list of strings")
            image = file.parent / str(row["image"])
            if not image.is_file():
                raise TvpError(f"{where}: image {row['image']} not found (looked for {image})")
            answer = str(row["answer"])
            label = None
            if choices is not None:
                choices = [str(c) for c in choices]
                if answer not in choices:
                    raise TvpError(f"{where}: answer {answer!r} is not one of its choices {choices}")
                label = choices.index(answer)
            samples.append(
                Sample(
                    id=str(row.get("id", f"{file.stem}:{n}")),
                    image=image,
                    answer=answer,
                    question=None if row.get("question") is None else str(row["question"]),
                    choices=choices,
                    label=label,
                    text=None if row.get("text") is None else str(row["text"]),
                    meta={k: v for k, v in row.items() if k not in _KNOWN},
                )
            )
        return RawSplit(samples, None)
