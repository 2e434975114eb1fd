"""Content fingerprints of an evaluation's inputs: a cached cell is reused only if none changed.

Each input gets a short identity from its contents, not its name: the task spec's fields (so a
template edit counts), the data's file list (relative path, size and either a content hash for
small files or the mtime for large ones), the model's files or hub revision plus its config,
the prompt's bytes and the tvprompt version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..imageio import IMAGE_SUFFIXES

SMALL_FILE = 64 * 1024  # non-image files up to this size are hashed (annotations, lists, configs)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def path_manifest(path: str | os.PathLike) -> list[list[Any]]:
    """``[relative path, size, sha256 | mtime_ns]`` for every file under ``path`` (or ``path`` itself).

    Small non-image files are hashed, so rewriting one with the same bytes changes nothing; images
    and large files count by size and mtime (hashing a million JPEGs would cost more than the eval).
    Hidden entries (``.cache``, ``.DS_Store``) are left out: readers ignore them too.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    rows = []
    for p in files:
        st = p.stat()
        small = st.st_size <= SMALL_FILE and p.suffix.lower() not in IMAGE_SUFFIXES
        ident: str | int = hashlib.sha256(p.read_bytes()).hexdigest() if small else st.st_mtime_ns
        rows.append([p.relative_to(root).as_posix() if p != root else p.name, st.st_size, ident])
    return rows


def data_fingerprint(data: str, options: dict[str, Any] | None = None) -> str:
    """Identity of the data at ``data`` and of any reader option naming a local path (e.g. ``image_dir``)."""
    parts: dict[str, Any] = {}
    for key, value in [("data", data), *sorted((options or {}).items())]:
        if isinstance(value, str | os.PathLike) and Path(value).expanduser().exists():
            parts[key] = path_manifest(Path(value).expanduser())
        elif key == "data":
            parts[key] = str(value)
    return digest(parts)


def task_fingerprint(spec: Any) -> str:
    """Identity of a task spec's contents (templates, choices, splits, ...), not its name or path."""
    if hasattr(spec, "to_dict"):
        fields = spec.to_dict()
    elif dataclasses.is_dataclass(spec):
        fields = dataclasses.asdict(spec)
    else:
        fields = repr(spec)
    return digest(fields)


def model_fingerprint(model_id: str) -> str:
    """Identity of a model: its local files (names, sizes, hashes/mtimes) or its cached hub revision.

    An id that cannot name a model (unknown scheme, unknown zoo member, a missing directory) is
    a :class:`UsageError` here, before anything is written.
    """
    from ..models.registry import resolve_source

    source = resolve_source(model_id)
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UsageError(f"--model {model_id}: {local} holds no config.json; is it a saved transformers model?")
        return digest([model_id, path_manifest(local)])
    if local.exists() or not _HUB_ID.match(source):
        raise UsageError(f"--model {model_id}: {source} is neither a model directory nor a hub id")
    return digest([model_id, _hub_revision(source)])


def _hub_revision(repo_id: str) -> list[str | None]:
    """The cached snapshot (commit) and config.json hash of a hub model, or Nones when not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return [None, None]
    found = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(found, str):
        return [None, None]
    path = Path(found)
    return [path.parent.name, hashlib.sha256(path.read_bytes()).hexdigest()]
