"""The prompt registry: validated prompts in the store, one row each, per-owner writes.

Every prompt enters through :meth:`Registry.add_dir`, i.e. through
:meth:`tvprompt.prompt.VisualPrompt.from_pretrained`: uploads and job results get exactly the
validation a local file gets. Writes hold one lock per process so that the "file, then row"
and "row, then file" orders cannot interleave (run one server process per store).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import PromptFileError, TvpError
from ..prompt import VisualPrompt
from .archive import MEMBERS, ArchiveLimits, pack_dir, read_archive, sha256_hex, write_members
from .db import NameRow, PromptRow
from .store import PromptStore

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NotFound(TvpError):
    """No such prompt or job."""


class Forbidden(TvpError):
    """The caller is not the owner."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise PromptFileError(f"name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
                              "digit")
    return name


class Registry:
    def __init__(self, sessions: sessionmaker, store: PromptStore, limits: ArchiveLimits, max_prompt_pixels: int,
                 cache_size: int = 32):
        self.sessions = sessions
        self.store = store
        self.limits = limits
        self.max_prompt_pixels = max_prompt_pixels
        self._write_lock = threading.Lock()
        self._cache: OrderedDict[str, VisualPrompt] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size

    # ------------------------------------------------------------------ writes
    def add_archive(self, data: bytes, owner: str, name: str | None = None) -> PromptRow:
        """Validate an uploaded zip and register it. Errors name archive members, never server paths."""
        members = read_archive(data, self.limits)
        with tempfile.TemporaryDirectory(prefix="tvp-upload-") as tmp:
            write_members(members, tmp)
            try:
                return self.add_dir(tmp, owner, name)
            except PromptFileError as e:
                message = str(e).replace(str(Path(tmp)) + "/", "").replace(str(Path(tmp)), "archive")
                raise PromptFileError(message) from None

    def add_dir(self, directory: str | Path, owner: str, name: str | None = None) -> PromptRow:
        """Validate a prompt directory with ``from_pretrained`` and register its known files."""
        prompt = VisualPrompt.from_pretrained(directory)
        cfg = prompt.config
        if cfg.image_height * cfg.image_width > self.max_prompt_pixels:
            raise PromptFileError(
                f"prompt_config.json: {cfg.image_height}x{cfg.image_width} is over this server's limit of "
                f"{self.max_prompt_pixels} pixels"
            )
        name = check_name(name or cfg.task or "prompt")
        data = pack_dir(directory)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_hex(p.read_bytes())}
            for p in sorted(Path(directory).iterdir())
            if p.is_file() and p.name in MEMBERS
        }
        sources = [str(s.get("model_id")) for s in cfg.sources if isinstance(s, dict) and s.get("model_id")]
        row = PromptRow(
            id=secrets.token_hex(8),
            owner=owner,
            name=name,
            version=0,
            sha256=sha256_hex(data),
            size=len(data),
            task=cfg.task if isinstance(cfg.task, str) else None,
            method=cfg.method if isinstance(cfg.method, str) else None,
            shape=cfg.shape,
            image_height=cfg.image_height,
            image_width=cfg.image_width,
            source_ids="|" + "".join(f"{s}|" for s in sources),
            config_json=json.dumps(cfg.to_dict(), sort_keys=True),
            files_json=json.dumps(files, sort_keys=True),
        )
        with self._write_lock:
            self.store.put(data)  # the file first ...
            try:
                for _ in range(5):
                    try:
                        with self.sessions.begin() as s:  # ... then the row that points at it
                            row.version = _next_version(s, owner, name)
                            s.add(row)
                        break
                    except IntegrityError:  # a version taken by another process: try the next one
                        continue
                else:
                    raise TvpError(f"could not register prompt {name!r}: version conflict; try again")
            except BaseException:
                self._drop_blob_if_unused(row.sha256)
                raise
        log.info("registered prompt %s (%s v%d, owner %s, sha256 %s)", row.id, name, row.version, owner,
                 row.sha256[:12])
        return row

    def delete(self, prompt_id: str, owner: str) -> None:
        with self._write_lock:
            with self.sessions.begin() as s:
                row = s.get(PromptRow, prompt_id)
                if row is None:
                    raise NotFound(f"prompt {prompt_id!r} not found")
                if row.owner != owner:
                    raise Forbidden(f"prompt {prompt_id!r} belongs to another owner")
                sha = row.sha256
                s.delete(row)  # the row first ...
            self._drop_blob_if_unused(sha)  # ... then the file
        log.info("deleted prompt %s", prompt_id)

    def _drop_blob_if_unused(self, sha: str) -> None:
        with self.sessions() as s:
            used = s.scalar(select(func.count()).select_from(PromptRow).where(PromptRow.sha256 == sha))
        if not used:
            self.store.remove(sha)
            with self._cache_lock:
                self._cache.pop(sha, None)

    def sweep(self) -> dict[str, int]:
        """Startup repair: drop temp files and unreferenced blobs; drop rows whose file is gone (never expected)."""
        with self._write_lock:
            temp = self.store.sweep_temp()
            with self.sessions() as s:
                referenced = set(s.scalars(select(PromptRow.sha256)))
            orphans = 0
            for sha, path in self.store.blobs():
                if sha not in referenced:
                    path.unlink()
                    orphans += 1
            missing = 0
            with self.sessions.begin() as s:
                for row in s.scalars(select(PromptRow)):
                    if not self.store.exists(row.sha256):
                        log.error("prompt %s: file %s is missing; removing the row", row.id, row.sha256)
                        s.delete(row)
                        missing += 1
        counts = {"temp_files": temp, "orphan_files": orphans, "rows_without_file": missing}
        if any(counts.values()):
            log.warning("store sweep: %s", counts)
        return counts

    # ------------------------------------------------------------------ reads
    def get(self, prompt_id: str) -> PromptRow:
        with self.sessions() as s:
            row = s.get(PromptRow, prompt_id)
        if row is None:
            raise NotFound(f"prompt {prompt_id!r} not found")
        return row

    def versions(self, row: PromptRow) -> list[PromptRow]:
        with self.sessions() as s:
            q = (select(PromptRow).where(PromptRow.owner == row.owner, PromptRow.name == row.name)
                 .order_by(PromptRow.version))
            return list(s.scalars(q))

    def search(
        self, task: str | None = None, model: str | None = None, owner: str | None = None, name: str | None = None,
        limit: int = 100, offset: int = 0,
    ) -> list[PromptRow]:
        q = select(PromptRow)
        if task:
            q = q.where(PromptRow.task == task)
        if owner:
            q = q.where(PromptRow.owner == owner)
        if name:
            q = q.where(PromptRow.name == name)
        if model:
            pattern = "%|" + model.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "|%"
            q = q.where(PromptRow.source_ids.like(pattern, escape="\\"))
        q = q.order_by(PromptRow.created_at.desc(), PromptRow.id).limit(limit).offset(offset)
        with self.sessions() as s:
            return list(s.scalars(q))

    def archive_bytes(self, row: PromptRow) -> bytes:
        try:
            return self.store.read(row.sha256)
        except FileNotFoundError:  # deleted between the lookup and the read
            raise NotFound(f"prompt {row.id!r} not found") from None

    def load(self, row: PromptRow) -> VisualPrompt:
        """The prompt of a row (LRU-cached by content), loaded through ``from_pretrained``."""
        with self._cache_lock:
            prompt = self._cache.get(row.sha256)
            if prompt is not None:
                self._cache.move_to_end(row.sha256)
                return prompt
        members = read_archive(self.archive_bytes(row), self.limits)
        with tempfile.TemporaryDirectory(prefix="tvp-load-") as tmp:
            prompt = VisualPrompt.from_pretrained(write_members(members, tmp))
        prompt.requires_grad_(False)
        with self._cache_lock:
            self._cache[row.sha256] = prompt
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return prompt


def _next_version(s: Session, owner: str, name: str) -> int:
    """Bump the (owner, name) counter in the caller's transaction; a deleted version is never given again."""
    bumped = s.execute(
        update(NameRow).where(NameRow.owner == owner, NameRow.name == name)
        .values(last_version=NameRow.last_version + 1)
    ).rowcount
    if bumped:
        return s.scalar(select(NameRow.last_version).where(NameRow.owner == owner, NameRow.name == name))
    # first version of this name, or a registry from before the counter: start after the highest row
    latest = s.scalar(select(func.max(PromptRow.version)).where(PromptRow.owner == owner, PromptRow.name == name))
    s.add(NameRow(owner=owner, name=name, last_version=(latest or 0) + 1))
    s.flush()  # a concurrent first insert fails here with IntegrityError: the caller retries
    return (latest or 0) + 1


def describe(row: PromptRow, versions: list[PromptRow] | None = None) -> dict[str, Any]:
    """The public metadata of a prompt."""
    config = json.loads(row.config_json)
    # rows written before configs were type-checked may hold anything here: never fail a listing on them
    sources, metrics = config.get("sources"), config.get("metrics")
    out: dict[str, Any] = {
        "id": row.id,
        "owner": row.owner,
        "name": row.name,
        "version": row.version,
        "task": row.task,
        "method": row.method,
        "shape": row.shape,
        "image_size": [row.image_height, row.image_width],
        "sources": [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else [],
        "metrics": metrics if isinstance(metrics, dict) else {},
        "sha256": row.sha256,
        "size": row.size,
        "files": json.loads(row.files_json),
        "format_version": config.get("format_version"),
        "library_version": config.get("library_version"),
        "created_at": row.created_at,
    }
    if versions is not None:
        out["config"] = config
        out["versions"] = [{"id": v.id, "version": v.version, "sha256": v.sha256,
                            "created_at": v.created_at} for v in versions]
    return out
