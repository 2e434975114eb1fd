"""Uploaded datasets: a token holder's small labelled set and its task spec, for training jobs.

An upload is a zip of images with ``manifest.jsonl`` (``{"image": "a.png", "answer": "cat"}`` per
line, optional ``split``/``question``) or with one folder per class (``cat/1.png``), plus a task
spec (instruction, choices). It is checked like a prompt archive (:mod:`.archive`'s name checks,
member count, declared and inflated sizes) and every image is decoded with the accepted formats
only (:mod:`tvprompt.imageio`). Member names are never used as paths: images are written as
``images/<n><suffix>`` with a new ``manifest.jsonl`` and ``task.yaml``, into a temporary folder
renamed into ``<store>/datasets/<id>`` before its row is added (a crash leaves a folder without a
row, swept at startup; never a row without its folder). Only the owner sees a dataset; others
get 404, as if it did not exist.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from ..errors import TvpError
from ..imageio import FORMATS, IMAGE_SUFFIXES, is_junk
from ..tasks import TaskSpec
from .archive import _CHUNK, ArchiveError, _check_name, _common_prefix
from .db import DatasetRow, JobRow
from .registry import NotFound

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPLITS = ("train", "val", "test")
MAX_CHOICES = 1000
MAX_CHOICE_CHARS = 100
MAX_INSTRUCTION_CHARS = 1000
DEFAULT_INSTRUCTION = "What is in this image? Answer with one of: {choices}."
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DatasetError(TvpError):
    """An uploaded dataset or its task spec is refused (400)."""


@dataclass(frozen=True)
class DatasetLimits:
    max_zip_bytes: int
    max_unpacked_bytes: int
    max_files: int
    max_image_pixels: int


def parse_choices(text: str | None) -> list[str] | None:
    """Choices from a form field: a JSON array, or names separated by commas or new lines; None when empty."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise DatasetError("choices: not a JSON array of strings; or give names separated by commas") from None
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise DatasetError("choices: give a JSON array of strings, or names separated by commas")
        items = value
    else:
        items = re.split(r"[,\n]", text)
    return [c.strip() for c in items if c.strip()]


def check_spec(name: str, instruction: str | None, choices: list[str] | None) -> tuple[str, str, list[str] | None]:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DatasetError(f"name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    instruction = (instruction or "").strip() or DEFAULT_INSTRUCTION
    if len(instruction) > MAX_INSTRUCTION_CHARS or _CONTROL.search(instruction):
        raise DatasetError(f"instruction: at most {MAX_INSTRUCTION_CHARS} characters, one line")
    if choices is not None:
        if not 2 <= len(choices) <= MAX_CHOICES:
            raise DatasetError(f"choices: give 2 to {MAX_CHOICES} answers, got {len(choices)}")
        for c in choices:
            if len(c) > MAX_CHOICE_CHARS or _CONTROL.search(c):
                raise DatasetError(f"choices: {c[:40]!r} is over {MAX_CHOICE_CHARS} characters or holds control "
                                   "characters")
        if len(set(choices)) != len(choices):
            raise DatasetError("choices: an answer is listed twice")
    return name, instruction, choices


# --------------------------------------------------------------------------- reading the zip
def _read_members(data: bytes, limits: DatasetLimits) -> dict[str, bytes]:
    """{name inside the top folder: bytes} of every file but junk; all archive checks applied."""
    if len(data) > limits.max_zip_bytes:
        raise ArchiveError(f"archive is {len(data)} bytes, over the limit of {limits.max_zip_bytes}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise ArchiveError("upload is not a zip archive; zip your images with manifest.jsonl, or one folder per "
                           "class") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > 2 * limits.max_files + 2:  # images, the manifest, folder entries
            raise ArchiveError(f"archive has {len(infos)} members, over the limit of {2 * limits.max_files + 2}")
        for info in infos:
            _check_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ArchiveError(f"archive member {info.filename!r}: symbolic links are not allowed")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r}: encrypted members are not allowed")
        files = [i for i in infos if not i.is_dir() and not any(is_junk(p) for p in i.filename.split("/"))]
        if len(files) > limits.max_files + 1:
            raise ArchiveError(f"archive has {len(files)} files, over the limit of {limits.max_files} images")
        declared = sum(i.file_size for i in files)
        if declared > limits.max_unpacked_bytes:
            raise ArchiveError(f"archive unpacks to {declared} bytes, over the limit of {limits.max_unpacked_bytes}")
        prefix = _common_prefix(files)
        names = {i.filename for i in files}
        if prefix and all(i.filename.count("/") == 1 for i in files) and prefix + "manifest.jsonl" not in names:
            prefix = None  # one class folder, not a folder around the dataset
        out: dict[str, bytes] = {}
        total = 0
        for info in files:
            name = info.filename[len(prefix):] if prefix else info.filename
            buf = bytearray()
            try:
                with zf.open(info) as fh:
                    while chunk := fh.read(_CHUNK):
                        buf += chunk
                        total += len(chunk)
                        if len(buf) > info.file_size or total > limits.max_unpacked_bytes:
                            raise ArchiveError(f"archive member {info.filename!r} unpacks past its declared size "
                                               "(possible zip bomb)")
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise ArchiveError(f"archive member {info.filename!r} is corrupt ({type(e).__name__})") from None
            out[name] = bytes(buf)
        return out


def _check_image(name: str, blob: bytes, max_pixels: int) -> None:
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"archive member {name!r}: not an image file (accepted: "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob), formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DatasetError(f"archive member {name!r}: {w}x{h} is over the limit of {max_pixels} pixels")
                im.load()
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise DatasetError(f"archive member {name!r}: not an image in an accepted format "
                           f"({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"archive member {name!r}: refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise DatasetError(f"archive member {name!r}: corrupt or truncated image") from None


def _manifest_rows(members: dict[str, bytes]) -> list[dict[str, Any]]:
    """(image member, answer, split, question) rows of manifest.jsonl."""
    try:
        lines = members["manifest.jsonl"].decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError("manifest.jsonl: not UTF-8 text") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise DatasetError(f"manifest.jsonl:{n}: not a JSON object") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"manifest.jsonl:{n}: not a JSON object")
        image, answer = obj.get("image"), obj.get("answer", obj.get("label"))
        if not isinstance(image, str) or not image:
            raise DatasetError(f"manifest.jsonl:{n}: field 'image' is missing or not a string")
        if not isinstance(answer, str | int) or isinstance(answer, bool):
            raise DatasetError(f"manifest.jsonl:{n}: field 'answer' is missing or not a string")
        key = image[2:] if image.startswith("./") else image
        if key not in members or key == "manifest.jsonl":
            raise DatasetError(f"manifest.jsonl:{n}: image {image!r} is not in the archive")
        split = obj.get("split", "train")
        if split not in SPLITS:
            raise DatasetError(f"manifest.jsonl:{n}: split {split!r}: use train, val or test")
        question = obj.get("question")
        if question is not None and (not isinstance(question, str) or len(question) > MAX_INSTRUCTION_CHARS):
            raise DatasetError(f"manifest.jsonl:{n}: field 'question' must be a string of at most "
                               f"{MAX_INSTRUCTION_CHARS} characters")
        rows.append({"member": key, "answer": str(answer), "split": split, "question": question, "line": n})
    return rows


def _folder_rows(members: dict[str, bytes]) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(members):
        parts = name.split("/")
        if len(parts) != 2:
            raise DatasetError(
                f"archive member {name!r}: without manifest.jsonl every image must sit in one folder per class "
                "(CLASS/image.png)"
            )
        rows.append({"member": name, "answer": parts[0], "split": "train", "question": None, "line": None})
    return rows


def build_dataset(
    data: bytes, name: str, instruction: str | None, choices: list[str] | None, limits: DatasetLimits, directory: Path,
) -> dict[str, Any]:
    """Validate an upload and write ``images/``, ``manifest.jsonl`` and ``task.yaml`` into ``directory`` (empty).

    Returns the dataset's summary (layout, images, classes, counts per split, the task spec).
    """
    name, instruction, choices = check_spec(name, instruction, choices)
    members = _read_members(data, limits)
    if not members:
        raise DatasetError("archive is empty; zip your images with manifest.jsonl, or one folder per class")
    layout = "manifest" if "manifest.jsonl" in members else "folders"
    rows = _manifest_rows(members) if layout == "manifest" else _folder_rows(members)
    if layout == "manifest":
        unused = sorted(set(members) - {r["member"] for r in rows} - {"manifest.jsonl"})
        if unused:
            raise DatasetError(f"archive member {unused[0]!r} is not named in manifest.jsonl; remove it or add a line "
                               "for it")
    if len(rows) < 2:
        raise DatasetError(f"the dataset has {len(rows)} image(s); give at least 2")
    if len(rows) > limits.max_files:
        raise DatasetError(f"the dataset has {len(rows)} images, over the limit of {limits.max_files}")
    answers = sorted({r["answer"] for r in rows})
    if choices is None:
        choices = answers
        check_spec(name, instruction, choices)
    else:
        for r in rows:
            if r["answer"] not in choices:
                where = f"manifest.jsonl:{r['line']}" if r["line"] else f"archive member {r['member']!r}"
                raise DatasetError(f"{where}: label {r['answer']!r} is not one of the choices ({', '.join(choices)})")
    try:
        spec = TaskSpec.from_dict({
            "version": 1, "name": name, "kind": "classification", "instruction": instruction,
            "choices": choices, "refine_choices": False, "metrics": ["top1"], "tse_text": "a photo of a {answer}.",
            "splits": {"train": "train", "val": "val" if any(r["split"] == "val" for r in rows) else None,
                       "test": "test" if any(r["split"] == "test" for r in rows) else None},
        }, source="task spec")
    except TvpError as e:
        raise DatasetError(str(e)) from None
    images = directory / "images"
    images.mkdir()
    lines = []
    counts: dict[str, int] = {}
    for i, r in enumerate(rows):
        blob = members[r["member"]]
        _check_image(r["member"], blob, limits.max_image_pixels)
        rel = f"images/{i:05d}{PurePosixPath(r['member']).suffix.lower()}"
        (directory / rel).write_bytes(blob)
        line = {"image": rel, "answer": r["answer"], "split": r["split"], "choices": choices}
        if r["question"]:
            line["question"] = r["question"]
        lines.append(json.dumps(line))
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "task.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=True), encoding="utf-8")
    return {"layout": layout, "images": len(rows), "choices": choices, "instruction": instruction, "splits": counts}


# --------------------------------------------------------------------------- the store of datasets
class DatasetStore:
    """Rows in ``datasets``, folders in ``root/<id>``; one owner sees and deletes their own."""

    def __init__(self, sessions: sessionmaker, root: Path, limits: DatasetLimits, max_per_owner: int) -> None:
        self.sessions = sessions
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.max_per_owner = max_per_owner

    def path(self, dataset_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16}", dataset_id):
            raise NotFound(f"dataset {dataset_id!r} not found")
        return self.root / dataset_id

    def add(self, data: bytes, owner: str, name: str, instruction: str | None, choices: list[str] | None) -> DatasetRow:
        with self.sessions() as s:
            held = s.scalar(select(func.count()).select_from(DatasetRow).where(DatasetRow.owner == owner))
        if held >= self.max_per_owner:
            raise DatasetError(f"you hold {held} datasets, the limit of this server; delete one first")
        dataset_id = secrets.token_hex(8)
        tmp = self.root / f".tmp-{dataset_id}"
        tmp.mkdir()
        try:
            summary = build_dataset(data, name, instruction, choices, self.limits, tmp)
            tmp.rename(self.root / dataset_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        row = DatasetRow(id=dataset_id, owner=owner, name=name, size=len(data), images=summary["images"],
                         summary_json=json.dumps(summary, sort_keys=True))
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except BaseException:
            shutil.rmtree(self.root / dataset_id, ignore_errors=True)
            raise
        log.info("dataset %s (%s, %d images) uploaded by %s", dataset_id, name, summary["images"], owner)
        return row

    def list(self, owner: str) -> list[DatasetRow]:
        with self.sessions() as s:
            q = (select(DatasetRow).where(DatasetRow.owner == owner)
                 .order_by(DatasetRow.created_at.desc(), DatasetRow.id))
            return list(s.scalars(q))

    def get(self, dataset_id: str, owner: str) -> DatasetRow:
        """The owner's dataset; 404 for a missing one *and* for another owner's (its existence is private)."""
        with self.sessions() as s:
            row = s.get(DatasetRow, dataset_id)
        if row is None or row.owner != owner:
            raise NotFound(f"dataset {dataset_id!r} not found")
        return row

    def files(self, dataset_id: str, owner: str) -> tuple[Path, Path]:
        """(task.yaml, manifest.jsonl) of the owner's dataset, for a job."""
        self.get(dataset_id, owner)
        folder = self.path(dataset_id)
        if not (folder / "manifest.jsonl").is_file():
            raise NotFound(f"dataset {dataset_id!r} not found")
        return folder / "task.yaml", folder / "manifest.jsonl"

    def delete(self, dataset_id: str, owner: str) -> None:
        self.get(dataset_id, owner)
        pattern = f'%"dataset_id": "{dataset_id}"%'
        with self.sessions.begin() as s:
            busy = s.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.state.in_(("queued", "running")), JobRow.request_json.like(pattern)))
            if busy:
                raise DatasetError(f"dataset {dataset_id!r} is used by a queued or running job; cancel it first")
            row = s.get(DatasetRow, dataset_id)
            if row is not None:
                s.delete(row)  # the row first ...
        shutil.rmtree(self.path(dataset_id), ignore_errors=True)  # ... then the folder
        log.info("deleted dataset %s", dataset_id)

    def sweep(self) -> int:
        """Startup repair: folders without a row (an interrupted upload or delete) are removed."""
        with self.sessions() as s:
            known = set(s.scalars(select(DatasetRow.id)))
        removed = 0
        for path in self.root.iterdir():
            if path.name not in known:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                removed += 1
        return removed


def describe_dataset(row: DatasetRow) -> dict[str, Any]:
    summary = json.loads(row.summary_json)
    return {"id": row.id, "owner": row.owner, "name": row.name, "size": row.size, "images": row.images,
            "created_at": row.created_at, **{k: summary[k] for k in ("layout", "choices", "instruction", "splits")}}
