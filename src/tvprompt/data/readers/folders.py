"""ImageFolder layouts: ``root/<class>/*.jpg`` or ``root/{train,val,test}/<class>/*.jpg`` (ImageNette)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import TvpError
from ...imageio import IMAGE_SUFFIXES, is_junk, iter_image_files
from ..sample import Sample
from . import RawSplit, Reader, register_reader

SPLIT_DIRS = ("train", "val", "valid", "validation", "test")


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not is_junk(p.name))


def _has_images(path: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file() and not is_junk(p.name))


@register_reader
class ImageFolderReader(Reader):
    """One folder per class. With split folders (train/ val/ test/) each is one split; else one pool ``all``."""

    name = "imagefolder"
    priority = 90  # generic: tried after the specific layouts

    def _split_dirs(self, path: Path) -> dict[str, Path]:
        return {d.name: d for d in _class_dirs(path) if d.name in SPLIT_DIRS and _class_dirs(d)}

    def detect(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if self._split_dirs(path):
            return True
        dirs = _class_dirs(path)
        return bool(dirs) and all(_has_images(d) for d in dirs)

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        return sorted(self._split_dirs(path)) or ["all"]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        split_dirs = self._split_dirs(path)
        if split_dirs:
            if split not in split_dirs:
                raise TvpError(f"{path}: no {split}/ folder (found {', '.join(sorted(split_dirs))})")
            base = split_dirs[split]
        elif split == "all":
            base = path
        else:
            raise TvpError(f"{path}: an ImageFolder without split folders has only the split 'all'")
        classes = [d.name for d in _class_dirs(base)]
        if split_dirs:  # every split shares one class list, so labels agree across splits
            classes = sorted({d.name for s in split_dirs.values() for d in _class_dirs(s)})
        index = {c: i for i, c in enumerate(classes)}
        samples = [
            Sample(id=f"{split}/{f.relative_to(base).as_posix()}", image=f, answer=d.name, label=index[d.name])
            for d in _class_dirs(base)
            for f in iter_image_files(d)
        ]
        return RawSplit(samples, classes)


@register_reader
class ImagenetteReader(ImageFolderReader):
    """ImageNette / Imagewoof: ``imagenette2*/{train,val}/<wnid>/*.JPEG``; classes are WordNet ids."""

    name = "imagenette"
    priority = 80
    roots = ("imagenette2", "imagenette2-320", "imagenette2-160", "imagewoof2", "imagewoof2-320", "imagewoof2-160")

    def _root(self, path: Path) -> Path:
        for cand in (path, *(path / r for r in self.roots)):
            if (cand / "train").is_dir() and (cand / "val").is_dir():
                return cand
        return path

    def _split_dirs(self, path: Path) -> dict[str, Path]:
        return super()._split_dirs(self._root(path)) if path.is_dir() else {}

    def detect(self, path: Path) -> bool:
        dirs = self._split_dirs(path)
        wnid = [d.name for s in dirs.values() for d in _class_dirs(s)]
        return "train" in dirs and bool(wnid) and all(n[:1] == "n" and n[1:].isdigit() for n in wnid)

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        return super().read(self._root(path), split, options)
