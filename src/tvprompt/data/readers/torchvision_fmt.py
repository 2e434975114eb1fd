"""torchvision-format local roots: CIFAR-10/100, SVHN, Oxford-IIIT Pets, FGVC-Aircraft, Food-101.

The folders are what torchvision's ``download=True`` leaves under ``root`` (or the official
archives unpacked there). torchvision itself is never needed to read them; it is imported
only for ``download=True``.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import TvpError, UsageError
from ..sample import ArrayImage, Sample
from . import RawSplit, Reader, find_child, register_reader

log = logging.getLogger(__name__)


# CIFAR ships its data as Python pickles. Unpickling can run arbitrary code, so this Unpickler
# resolves only the handful of globals that rebuild numpy arrays (and bytes from old pickles);
# anything else in the file -- a class, a function -- is refused with an error.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5 (numpy 1 / numpy 2 names)
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def safe_unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR batch file: dicts, lists, strings and numpy arrays only; keys decoded to str."""
    try:
        data = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except OSError as e:
        raise TvpError(f"{path}: cannot read ({e.strerror})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise TvpError(f"{path}: not a CIFAR batch file ({e})") from None
    if not isinstance(data, dict):
        raise TvpError(f"{path}: not a CIFAR batch file (top level is {type(data).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _names(values: list[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _torchvision_download(cls_name: str, root: Path, **kwargs: Any) -> None:
    try:
        import torchvision.datasets as tvd  # noqa: PLC0415 - optional, only for download=True
    except ImportError:
        raise UsageError(
            f"download=True uses torchvision, which is not installed; install it (pip install torchvision) "
            f"or download {cls_name} by hand into {root}"
        ) from None
    getattr(tvd, cls_name)(str(root), download=True, **kwargs)


class _Cifar(Reader):
    folder = ""
    label_key = ""
    names_key = ""
    meta_file = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    tv_class = ""

    def _root(self, path: Path) -> Path | None:
        for cand in (path, path / self.folder):
            if (cand / self.meta_file).is_file() and (cand / self.test_files[0]).is_file():
                return cand
        return None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        return ["train", "test"]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path)
        if root is None:
            raise TvpError(f"{path}: no {self.folder}/{self.meta_file}; point at the folder torchvision downloads into")
        files = {"train": self.train_files, "test": self.test_files}.get(split)
        if files is None:
            raise TvpError(f"{path}: {self.name} has splits train and test, not {split!r}")
        classes = _names(safe_unpickle(root / self.meta_file)[self.names_key])
        arrays, labels = [], []
        for name in files:
            batch = safe_unpickle(root / name)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise TvpError(f"{root / name}: expected data of shape (N, 3072), got {data.shape}")
            arrays.append(data.reshape(-1, 3, 32, 32))
            labels += [int(x) for x in batch[self.label_key]]
        images = np.concatenate(arrays)
        samples = [
            Sample(id=f"{self.name}/{split}/{i:05d}", image=ArrayImage(images, i, "CHW"), answer=classes[y], label=y)
            for i, y in enumerate(labels)
        ]
        return RawSplit(samples, classes)

    def download(self, path: Path, split: str) -> None:
        _torchvision_download(self.tv_class, path, train=split != "test")


@register_reader
class Cifar10Reader(_Cifar):
    name = "cifar10"
    folder = "cifar-10-batches-py"
    label_key = "labels"
    names_key = "label_names"
    meta_file = "batches.meta"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    tv_class = "CIFAR10"


@register_reader
class Cifar100Reader(_Cifar):
    name = "cifar100"
    folder = "cifar-100-python"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    meta_file = "meta"
    train_files = ("train",)
    test_files = ("test",)
    tv_class = "CIFAR100"


@register_reader
class SvhnReader(Reader):
    """SVHN cropped digits: ``{train,test,extra}_32x32.mat`` (X: 32x32x3xN uint8, y: Nx1, 10 means 0)."""

    name = "svhn"

    def _root(self, path: Path) -> Path | None:
        return find_child(path, ("svhn", "SVHN"), "test_32x32.mat") or find_child(path, ("svhn",), "train_32x32.mat")

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        root = self._root(path)
        return [s for s in ("train", "test", "extra") if root and (root / f"{s}_32x32.mat").exists()]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        from scipy.io import loadmat

        root = self._root(path) or path
        file = root / f"{split}_32x32.mat"
        if not file.exists():
            raise TvpError(f"{file}: not found; SVHN splits are train, test, extra")
        try:
            mat = loadmat(file)
        except (OSError, ValueError, NotImplementedError) as e:
            raise TvpError(f"{file}: not a readable .mat file ({e})") from None
        if "X" not in mat or "y" not in mat:
            raise TvpError(f"{file}: expected variables X and y")
        images = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 0, 1, 2))  # N, H, W, C
        labels = np.asarray(mat["y"]).reshape(-1).astype(np.int64) % 10  # the file stores digit 0 as 10
        classes = [str(d) for d in range(10)]
        samples = [
            Sample(id=f"svhn/{split}/{i:06d}", image=ArrayImage(images, i, "HWC"), answer=classes[y], label=int(y))
            for i, y in enumerate(labels.tolist())
        ]
        return RawSplit(samples, classes)

    def download(self, path: Path, split: str) -> None:
        _torchvision_download("SVHN", path, split=split)


def _read_lines(file: Path) -> list[str]:
    try:
        return [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise TvpError(f"{file}: cannot read ({e.strerror})") from None


@register_reader
class OxfordPetsReader(Reader):
    """``oxford-iiit-pet/annotations/{trainval,test}.txt`` (``Name_123 class species breed``) + ``images/``."""

    name = "oxford_pets"

    def _root(self, path: Path) -> Path | None:
        return find_child(path, ("oxford-iiit-pet",), "annotations/trainval.txt")

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        return ["trainval", "test"]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path) or path
        file = root / "annotations" / f"{split}.txt"
        rows = []
        for n, line in enumerate(_read_lines(file), 1):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise TvpError(f"{file}:{n}: expected 'Image_id class_id species breed_id'")
            rows.append((parts[0], int(parts[1]) - 1))
        names = {cid: image_id.rsplit("_", 1)[0] for image_id, cid in rows}
        classes = [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []
        samples = [
            Sample(id=f"oxford_pets/{image_id}", image=root / "images" / f"{image_id}.jpg", answer=classes[c], label=c)
            for image_id, c in rows
        ]
        return RawSplit(samples, classes)

    def download(self, path: Path, split: str) -> None:
        _torchvision_download("OxfordIIITPet", path, split=split)


@register_reader
class FgvcAircraftReader(Reader):
    """``fgvc-aircraft-2013b/data/images_variant_{split}.txt`` (``1025794 707-320``) + ``data/images/``."""

    name = "fgvc_aircraft"

    def _root(self, path: Path) -> Path | None:
        found = find_child(path, ("fgvc-aircraft-2013b",), "data/variants.txt")
        return found / "data" if found else None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        root = self._root(path)
        return [s for s in ("train", "val", "trainval", "test") if root and (root / f"images_variant_{s}.txt").exists()]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path) or path
        classes = _read_lines(root / "variants.txt")
        index = {c: i for i, c in enumerate(classes)}
        file = root / f"images_variant_{split}.txt"
        samples = []
        for n, line in enumerate(_read_lines(file), 1):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise TvpError(f"{file}:{n}: variant {variant!r} is not listed in {root / 'variants.txt'}")
            samples.append(
                Sample(id=f"fgvc_aircraft/{image_id}", image=root / "images" / f"{image_id}.jpg", answer=variant,
                       label=index[variant])  # fmt: skip
            )
        return RawSplit(samples, classes)

    def download(self, path: Path, split: str) -> None:
        _torchvision_download("FGVCAircraft", path, split=split)


@register_reader
class Food101Reader(Reader):
    """``food-101/meta/{classes,train,test}.txt`` (or ``.json``) + ``images/<class>/<id>.jpg``."""

    name = "food101"

    def _root(self, path: Path) -> Path | None:
        return find_child(path, ("food-101",), "meta/classes.txt")

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        return ["train", "test"]

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path) or path
        classes = _read_lines(root / "meta" / "classes.txt")
        index = {c: i for i, c in enumerate(classes)}
        txt, js = root / "meta" / f"{split}.txt", root / "meta" / f"{split}.json"
        if txt.exists():
            entries = _read_lines(txt)
        elif js.exists():
            try:
                entries = [e for items in json.loads(js.read_text(encoding="utf-8")).values() for e in items]
            except (json.JSONDecodeError, AttributeError) as e:
                raise TvpError(f"{js}: expected {{class: [class/id, ...]}} ({e})") from None
        else:
            raise TvpError(f"{txt}: not found; Food-101 splits are train and test")
        samples = []
        for entry in entries:
            cls = entry.split("/", 1)[0]
            if cls not in index:
                raise TvpError(f"{txt if txt.exists() else js}: class {cls!r} of {entry} is not in meta/classes.txt")
            samples.append(
                Sample(id=f"food101/{entry}", image=root / "images" / f"{entry}.jpg", answer=cls, label=index[cls])
            )
        return RawSplit(samples, classes)

    def download(self, path: Path, split: str) -> None:
        _torchvision_download("Food101", path, split=split)
