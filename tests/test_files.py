"""Atomic writes: whole files or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from tvprompt.data import shapeworld as sw
from tvprompt.files import atomic_dir, atomic_path, current_umask, write_text_atomic


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def test_outputs_respect_the_umask(tmp_path, umask):
    write_text_atomic(tmp_path / "results.json", "{}")
    with atomic_dir(tmp_path / "prompt") as d:
        (d / "prompt.safetensors").write_bytes(b"x")
    assert mode(tmp_path / "results.json") == 0o644 and mode(tmp_path / "prompt") == 0o755
    assert mode(tmp_path / "prompt" / "prompt.safetensors") == 0o644
    umask(0o027)
    assert current_umask() == 0o027
    write_text_atomic(tmp_path / "shared.md", "x")
    with atomic_dir(tmp_path / "shared") as d:
        pass
    assert mode(tmp_path / "shared.md") == 0o640 and mode(tmp_path / "shared") == 0o750


def test_generated_data_folder_is_readable_by_others(tmp_path, umask):
    sw.write_dataset("exist", 4, tmp_path / "data")
    assert mode(tmp_path / "data") == 0o755
    assert mode(tmp_path / "data" / "manifest.jsonl") == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
