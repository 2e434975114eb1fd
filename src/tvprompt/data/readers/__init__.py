"""Dataset readers: one class per on-disk layout, registered by name.

A reader turns a local root into :class:`RawSplit`s (samples whose images are still paths or
in-memory references, plus the dataset's raw class names). Layouts are auto-detected
(:func:`detect_format`); ``format=`` forces one. Registering a new reader is a decorator::

    @register_reader
    class MyReader(Reader):
        name = "mine"
        ...
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import TvpError, UsageError
from ..sample import Sample


@dataclass
class RawSplit:
    samples: list[Sample]
    classes: list[str] | None = None  # raw class names, in the dataset's label order


class Reader:
    """Base class. Subclasses set ``name`` and implement ``_root`` (or ``detect``), ``splits`` and ``read``."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 50  # lower is tried first by detect_format (specific before generic)
    download_hint: ClassVar[str] = ""

    def _root(self, path: Path) -> Path | None:
        """Where this reader's layout starts inside ``path`` (``path`` itself or a known sub-folder)."""
        raise NotImplementedError

    def detect(self, path: Path) -> bool:
        """Whether ``path`` holds this reader's layout; by default, whether ``_root`` finds it."""
        return path.is_dir() and self._root(path) is not None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        raise NotImplementedError

    def download(self, path: Path, split: str) -> None:
        raise UsageError(f"format {self.name} has no download; fetch the files by hand into {path}")


_READERS: dict[str, Reader] = {}
_BUILTIN_MODULES = ("torchvision_fmt", "folders", "vqa", "manifest", "hf")


def register_reader(cls: type[Reader]) -> type[Reader]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _READERS:
        raise ValueError(f"a reader named {cls.name!r} is already registered")
    _READERS[cls.name] = cls()
    return cls


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def list_formats() -> list[str]:
    _load_builtins()
    return sorted(_READERS)


def get_reader(name: str) -> Reader:
    _load_builtins()
    if name not in _READERS:
        raise UsageError(f"unknown dataset format {name!r}; choose from {', '.join(sorted(_READERS))}")
    return _READERS[name]


def detect_format(path: Path, hint: str | None = None) -> str:
    """The reader whose layout matches ``path``; ``hint`` (the task's format) breaks ties."""
    _load_builtins()
    if not path.exists():
        raise TvpError(f"{path}: no such file or folder")
    matches = [r.name for r in sorted(_READERS.values(), key=lambda r: (r.priority, r.name)) if r.detect(path)]
    if hint in matches:
        return hint
    if matches:
        return matches[0]
    if hint is not None and hint in _READERS:
        return hint
    raise TvpError(
        f"{path}: cannot tell the dataset layout; pass format= (one of {', '.join(sorted(_READERS))}) "
        "or write a JSONL manifest (see docs/tasks-and-data.md)"
    )


def find_child(path: Path, names: tuple[str, ...], marker: str) -> Path | None:
    """``path`` or one of its children ``names`` that holds ``marker``."""
    for cand in (path, *(path / n for n in names)):
        if (cand / marker).exists():
            return cand
    return None


__all__ = ["RawSplit", "Reader", "detect_format", "find_child", "get_reader", "list_formats", "register_reader"]
