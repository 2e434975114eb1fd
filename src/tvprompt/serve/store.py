"""Content-addressed prompt store: ``objects/<sha[:2]>/<sha256>.zip``, written atomically.

A blob is written to a temporary file in its final folder, flushed to disk and renamed, so
a reader (or a restart after ``kill -9``) sees a whole file or none. The registry writes the
file *before* the row that points at it and deletes the row *before* the file, so a crash can
leave an unreferenced file (swept at startup) but never a row without its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..files import atomic_path
from .archive import sha256_hex

log = logging.getLogger(__name__)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class PromptStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not _SHA_RE.match(sha):  # invariant: shas come from sha256_hex
            raise ValueError(f"not a sha256: {sha!r}")
        return self.objects / sha[:2] / f"{sha}.zip"

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 (a no-op when an identical blob is there). Returns the sha."""
        sha = sha256_hex(data)
        path = self.path(sha)
        if path.is_file() and path.stat().st_size == len(data):
            return sha
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(path.parent)
        return sha

    def read(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def remove(self, sha: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha).unlink()

    def blobs(self) -> Iterator[tuple[str, Path]]:
        """(sha, path) of every finished blob."""
        for path in sorted(self.objects.glob("*/*.zip")):
            if _SHA_RE.match(path.stem) and path.parent.name == path.stem[:2]:
                yield path.stem, path

    def sweep_temp(self) -> int:
        """Delete temporary files left by an interrupted write, and anything that is not a blob."""
        removed = 0
        for path in sorted(self.objects.glob("*/*")):
            ok = (path.is_file() and path.suffix == ".zip" and _SHA_RE.match(path.stem)
                  and path.parent.name == path.stem[:2])
            if not ok and path.is_file():
                path.unlink()
                removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
