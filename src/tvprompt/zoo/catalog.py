"""The shipped mini zoo: tiny MLLMs of real transformers architectures and a tiny CLIP guide.

Each member lives in ``tvprompt/zoo/weights/<name>/`` as an ordinary ``save_pretrained`` checkpoint
(``config.json``, ``model.safetensors``, tokenizer files, ``preprocessor_config.json``) plus a
``manifest.json`` saying how it was built (command, seed, data version, recipe) and what it
scores on every ShapeWorld task in both distributions. ``zoo:<name>`` model ids resolve here, then
load through the same ``from_pretrained`` path as any downloaded checkpoint.

``tvp zoo build`` (see :mod:`tvprompt.zoo.build`) rebuilds the directory deterministically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TvpError, UsageError

MANIFEST_NAME = "manifest.json"
ZOO_ENV = "TVPROMPT_ZOO_DIR"  # points the resolver at another zoo folder (tests, rebuilt zoos)


def zoo_dir() -> Path:
    """The folder holding the zoo: ``$TVPROMPT_ZOO_DIR`` when set, else the one inside the package."""
    override = os.environ.get(ZOO_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str  # "mllm" | "guide"
    family: str  # registry key (llava, blip2, ...) or "clip"
    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        return f"zoo:{self.name}"

    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        """{distribution: {task: accuracy}} as measured at build time."""
        return self.manifest.get("accuracy", {})


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise TvpError(f"{file}: cannot read the zoo manifest ({e.strerror}); rebuild with `tvp zoo build`") from None
    except ValueError as e:
        raise TvpError(f"{file}: not valid JSON ({e}); rebuild with `tvp zoo build`") from None
    if not isinstance(data, dict) or "name" not in data:
        raise TvpError(f"{file}: not a zoo manifest (no 'name'); rebuild with `tvp zoo build`")
    return data


def list_zoo(directory: Path | None = None) -> list[ZooEntry]:
    """Every built zoo member (folders holding a manifest), sorted: MLLMs first, then guides."""
    root = directory or zoo_dir()
    entries = []
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file()):
            m = read_manifest(sub)
            entries.append(ZooEntry(m["name"], m.get("kind", "mllm"), m.get("family", "?"), sub, m))
    return sorted(entries, key=lambda e: (e.kind != "mllm", e.name))


def resolve(name: str) -> Path:
    """Local checkpoint directory of zoo member ``name`` (what ``zoo:<name>`` ids load)."""
    root = zoo_dir()
    path = root / name
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UsageError(f"zoo name {name!r} is not valid; see `tvp zoo list`")
    if not (path / MANIFEST_NAME).is_file():
        known = [e.name for e in list_zoo(root)]
        hint = f"known: {', '.join(known)}" if known else "the zoo is empty: run `tvp zoo build`"
        raise UsageError(f"no zoo model named {name!r} in {root}; {hint}")
    if not (path / "config.json").is_file():
        raise TvpError(f"{path}: zoo model {name!r} has no config.json; rebuild with `tvp zoo build`")
    return path


def mllm_names() -> list[str]:
    return [e.name for e in list_zoo() if e.kind == "mllm"]


def guide_names() -> list[str]:
    return [e.name for e in list_zoo() if e.kind == "guide"]
