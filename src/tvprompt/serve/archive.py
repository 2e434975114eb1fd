"""Prompt archives: the zip form of a prompt directory, packed canonically and unpacked safely.

Used by the server (uploads, downloads) and by the client (push, pull), so it needs only the
standard library. Member names are never used as paths: a member is accepted only when its
name (after an optional single top folder) is one of :data:`MEMBERS`, so ``../`` tricks,
absolute names, symlinks and unknown files are refused before anything is written. Sizes are
checked against the declared headers *and* while decompressing (headers can lie).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import PromptFileError

# member name -> largest accepted size in bytes (None: the archive-wide weights limit)
MEMBERS: dict[str, int | None] = {
    "prompt_config.json": 1 << 20,
    "prompt.safetensors": None,
    "preview.png": 16 << 20,
    "README.md": 1 << 20,
}
REQUIRED = ("prompt_config.json", "prompt.safetensors")
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 16


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied to an archive before and while it is unpacked."""

    max_archive_bytes: int = 64 << 20
    max_unpacked_bytes: int = 96 << 20
    max_weights_bytes: int = 64 << 20
    max_members: int = 16
    # The ratio limit applies to members over ``ratio_min_bytes`` unpacked. Every member is
    # already bounded by its declared size and by the totals, checked while inflating; the ratio
    # only refuses *large* members that compress suspiciously well. A valid δ can compress
    # ~1000x (a zero or sparse prompt: a zero full-frame 512x512 δ is 3 MiB), so members under
    # 16 MiB are never judged by their ratio.
    max_ratio: float = 200.0
    ratio_min_bytes: int = 16 << 20


class ArchiveError(PromptFileError):
    """An archive is not a zip, breaks a limit, or holds a member that is not allowed."""


def pack_dir(directory: str | os.PathLike) -> bytes:
    """Zip the known files of a prompt directory canonically (sorted, fixed dates): same files, same bytes."""
    directory = Path(directory)
    missing = [n for n in REQUIRED if not (directory / n).is_file()]
    if missing:
        raise PromptFileError(f"{directory}: missing {', '.join(missing)}; not a prompt directory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(MEMBERS):
            path = directory / name
            if path.is_file():
                info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_name(raw: str, prefix: str | None) -> str:
    name = raw[len(prefix) :] if prefix else raw
    if name not in MEMBERS:
        allowed = ", ".join(sorted(MEMBERS))
        raise ArchiveError(f"archive member {raw!r} is not allowed; a prompt archive holds only {allowed}")
    return name


def _check_name(raw: str) -> None:
    if not raw or "\\" in raw or "\x00" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveError(f"archive member {raw!r}: absolute or malformed name")
    parts = raw.split("/")  # not PurePosixPath(raw).parts, which drops "." segments
    if any(p in ("..", ".") for p in parts) or "" in parts[:-1]:
        raise ArchiveError(f"archive member {raw!r}: '..' or '.' in a name is not allowed")


def _common_prefix(files: list[zipfile.ZipInfo]) -> str | None:
    """'top/' when every file sits in one top folder (as ``zip -r x.zip dir/`` writes), else None."""
    tops = {f.filename.split("/", 1)[0] for f in files}
    if len(tops) == 1 and all("/" in f.filename for f in files):
        return tops.pop() + "/"
    return None


def read_archive(data: bytes, limits: ArchiveLimits) -> dict[str, bytes]:
    """Validate a prompt archive and return {member name: bytes}. Raises :class:`ArchiveError`."""
    if len(data) > limits.max_archive_bytes:
        raise ArchiveError(f"archive is {len(data)} bytes, over the limit of {limits.max_archive_bytes}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise ArchiveError("upload is not a zip archive; zip a prompt directory (prompt_config.json, "
                           "prompt.safetensors)") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveError(f"archive has {len(infos)} members, over the limit of {limits.max_members}")
        for info in infos:
            _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"archive member {info.filename!r}: symbolic links are not allowed")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r}: encrypted members are not allowed")
        files = [i for i in infos if not i.is_dir()]
        prefix = _common_prefix(files)
        declared = sum(i.file_size for i in files)
        if declared > limits.max_unpacked_bytes:
            raise ArchiveError(f"archive unpacks to {declared} bytes, over the limit of {limits.max_unpacked_bytes}")
        out: dict[str, bytes] = {}
        total = 0
        for info in files:
            name = _member_name(info.filename, prefix)
            if name in out:
                raise ArchiveError(f"archive member {name!r} appears twice")
            cap = MEMBERS[name] if MEMBERS[name] is not None else limits.max_weights_bytes
            if info.file_size > cap:
                raise ArchiveError(f"archive member {name!r} is {info.file_size} bytes, over the limit of {cap}")
            if (info.file_size > limits.ratio_min_bytes
                    and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
                raise ArchiveError(
                    f"archive member {name!r}: compression ratio over {limits.max_ratio:g} (possible zip bomb)"
                )
            buf = bytearray()
            try:
                with zf.open(info) as fh:
                    while chunk := fh.read(_CHUNK):
                        buf += chunk
                        total += len(chunk)
                        if len(buf) > min(cap, info.file_size) or total > limits.max_unpacked_bytes:
                            raise ArchiveError(f"archive member {name!r} unpacks past its declared size (possible zip "
                                               "bomb)")
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise ArchiveError(f"archive member {name!r} is corrupt "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            out[name] = bytes(buf)
        missing = [n for n in REQUIRED if n not in out]
        if missing:
            raise ArchiveError(f"archive is missing {', '.join(missing)}; zip a prompt directory")
        return out


def write_members(members: dict[str, bytes], directory: str | os.PathLike) -> Path:
    """Write validated members (names from :data:`MEMBERS` only) into an existing directory."""
    directory = Path(directory)
    for name, blob in members.items():
        if name not in MEMBERS:  # invariant: read_archive only returns known names
            raise ArchiveError(f"archive member {name!r} is not allowed")
        (directory / name).write_bytes(blob)
    return directory
