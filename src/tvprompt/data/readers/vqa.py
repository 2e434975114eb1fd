"""Question-style datasets: CLEVR counting, HatefulMemes, POPE."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ...errors import TvpError
from ..sample import Sample
from . import RawSplit, Reader, register_reader


def _load_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise TvpError(f"{file}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise TvpError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None


def _read_jsonl(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming file:line."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TvpError(f"{file}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise TvpError(f"{file}: not UTF-8 text") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TvpError(f"{file}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise TvpError(f"{file}:{n}: expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


@register_reader
class ClevrReader(Reader):
    """``CLEVR_v1.0/``: ``images/<split>/``, ``scenes/CLEVR_<split>_scenes.json`` and/or
    ``questions/CLEVR_<split>_questions.json``.

    With scenes, one sample per image whose answer is the number of objects (the paper's
    "How many objects are there?"). Without scenes, the counting questions (integer answers)
    of the questions file, with the question text in ``Sample.question``.
    """

    name = "clevr"

    def _root(self, path: Path) -> Path | None:
        for cand in (path, path / "CLEVR_v1.0"):
            if (cand / "images").is_dir() and ((cand / "scenes").is_dir() or (cand / "questions").is_dir()):
                return cand
        return None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        root = self._root(path)
        if root is None:
            return []
        found = {f.name.split("_")[1] for d in ("scenes", "questions") for f in (root / d).glob("CLEVR_*_*.json")}
        return sorted(found)

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path)
        if root is None:
            raise TvpError(f"{path}: expected images/ and scenes/ or questions/ (the CLEVR_v1.0 layout)")
        scenes = root / "scenes" / f"CLEVR_{split}_scenes.json"
        questions = root / "questions" / f"CLEVR_{split}_questions.json"
        images = root / "images" / split
        samples: list[Sample] = []
        if scenes.exists() and options.get("source", "scenes") == "scenes":
            data = _load_json(scenes)
            for i, sc in enumerate(data.get("scenes", []) if isinstance(data, dict) else []):
                if "image_filename" not in sc or "objects" not in sc:
                    raise TvpError(f"{scenes}: scene {i} lacks image_filename or objects")
                name = sc["image_filename"]
                samples.append(Sample(id=f"clevr/{split}/{Path(name).stem}", image=images / name,
                                      answer=str(len(sc["objects"]))))  # fmt: skip
        elif questions.exists():
            data = _load_json(questions)
            for i, q in enumerate(data.get("questions", []) if isinstance(data, dict) else []):
                answer = str(q.get("answer", ""))
                if not answer.isdigit():
                    continue  # not a counting question (or an unlabelled test question)
                if "image_filename" not in q or "question" not in q:
                    raise TvpError(f"{questions}: question {i} lacks image_filename or question")
                qid = q.get("question_index", i)
                samples.append(Sample(id=f"clevr/{split}/q{qid}", image=images / q["image_filename"], answer=answer,
                                      question=q["question"], meta={"image_index": q.get("image_index")}))  # fmt: skip
        else:
            raise TvpError(f"{root}: neither {scenes.name} nor {questions.name} found for split {split!r}")
        return RawSplit(samples, None)


@register_reader
class HatefulMemesReader(Reader):
    """``<root>/{train,dev_seen,test_seen,...}.jsonl`` lines ``{"id", "img": "img/x.png", "label", "text"}``."""

    name = "hateful_memes"

    def _root(self, path: Path) -> Path | None:
        for cand in (path, path / "data", path / "hateful_memes"):
            if (cand / "img").is_dir() and (cand / "train.jsonl").exists():
                return cand
        return None

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        root = self._root(path)
        return sorted(f.stem for f in root.glob("*.jsonl")) if root else []

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        root = self._root(path) or path
        file = root / f"{split}.jsonl"
        if not file.exists():
            raise TvpError(f"{file}: not found (splits here: {', '.join(self.splits(path, options)) or 'none'})")
        samples = []
        for n, row in _read_jsonl(file):
            if "img" not in row or "text" not in row:
                raise TvpError(f"{file}:{n}: expected fields img and text")
            if row.get("label") not in (0, 1):
                raise TvpError(f"{file}:{n}: label must be 0 or 1 (this split may be unlabelled; pick another)")
            samples.append(Sample(id=f"hateful_memes/{row.get('id', n)}", image=root / row["img"],
                                  answer="yes" if row["label"] == 1 else "no", text=str(row["text"])))  # fmt: skip
        return RawSplit(samples, None)


@register_reader
class PopeReader(Reader):
    """POPE question files ``coco_pope_{random,popular,adversarial}.json`` (one JSON object per line:
    ``question_id, image, text, label``) and the COCO val2014 image folder.

    The image folder is ``format_options.image_dir`` (relative to the question file), else the
    first of ``val2014/``, ``images/``, ``coco/val2014/`` next to the question files.
    """

    name = "pope"
    priority = 40

    def _files(self, path: Path) -> list[Path]:
        if path.is_file():
            return [path]
        return sorted(path.glob("coco_pope_*.json")) + sorted(path.glob("coco/coco_pope_*.json"))

    def detect(self, path: Path) -> bool:
        if path.is_file():
            return path.suffix == ".json" and "pope" in path.stem.lower()
        return bool(self._files(path))

    def splits(self, path: Path, options: dict[str, Any]) -> list[str]:
        return ["all"]

    def _question_file(self, path: Path, options: dict[str, Any]) -> Path:
        files = self._files(path)
        subset = options.get("subset")
        if path.is_file():
            named = re.search(r"pope_(random|popular|adversarial)$", path.stem)
            if subset and named and named.group(1) != subset:
                raise TvpError(f"{path}: this is the POPE {named.group(1)} subset but the task asks for {subset}; "
                               f"use --task pope_{named.group(1)}")
            return path
        for f in files:
            if subset is None or f.stem.endswith(f"_{subset}"):
                return f
        raise TvpError(f"{path}: no coco_pope_{subset or '*'}.json question file")

    def read(self, path: Path, split: str, options: dict[str, Any]) -> RawSplit:
        file = self._question_file(path, options)
        base = file.parent
        if options.get("image_dir"):
            images = base / options["image_dir"]
        else:
            cands = [base / "val2014", base / "images", base / "coco" / "val2014", base.parent / "val2014"]
            images = next((c for c in cands if c.is_dir()), None)
            if images is None:
                raise TvpError(f"{base}: no COCO image folder (val2014/ or images/); set format_options.image_dir")
        samples = []
        for n, row in _read_jsonl(file):
            if not {"image", "text", "label"} <= set(row):
                raise TvpError(f"{file}:{n}: expected fields image, text and label")
            label = str(row["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise TvpError(f"{file}:{n}: label must be yes or no, got {row['label']!r}")
            samples.append(Sample(id=f"pope/{file.stem}/{row.get('question_id', n)}", image=images / row["image"],
                                  answer=label, question=str(row["text"])))  # fmt: skip
        return RawSplit(samples, None)
