"""Prompt archives: canonical packing and safe, limited unpacking (no server needed)."""

import io
import re
import stat
import struct
import zipfile

import pytest

from tvprompt.serve.archive import ArchiveError, ArchiveLimits, pack_dir, read_archive

from .service_utils import make_prompt

LIMITS = ArchiveLimits(max_archive_bytes=4 << 20, max_unpacked_bytes=8 << 20, max_weights_bytes=8 << 20, max_members=8)


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    d = make_prompt(tmp_path_factory.mktemp("p") / "prompt", delta_seed=1)
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_pack_is_canonical_and_round_trips(tmp_path, prompt_files):
    a = make_prompt(tmp_path / "a", delta_seed=1)
    first = pack_dir(a)
    (a / "unrelated.txt").write_text("not packed")
    assert pack_dir(a) == first  # same files -> same bytes (content address); unknown files ignored
    assert read_archive(first, LIMITS) == prompt_files


def test_single_top_folder_is_accepted(prompt_files):
    data = _zip({f"prompt/{k}": v for k, v in prompt_files.items()})
    assert read_archive(data, LIMITS) == prompt_files


MALFORMED, DOTS = "absolute or malformed name", "'..' or '.' in a name is not allowed"


@pytest.mark.parametrize(
    "name, error",
    [("../prompt.safetensors", DOTS), ("/etc/prompt.safetensors", MALFORMED), ("a/../prompt.safetensors", DOTS),
     ("..\\prompt.safetensors", MALFORMED), ("C:/prompt.safetensors", MALFORMED), ("./prompt.safetensors", DOTS)],
)
def test_traversal_names_are_refused(prompt_files, name, error):
    members = dict(prompt_files)
    members[name] = members.pop("prompt.safetensors")
    with pytest.raises(ArchiveError, match=re.escape(error)):  # the name check's own error, not a later layer's
        read_archive(_zip(members), LIMITS)


def test_stream_longer_than_declared_is_stopped_while_reading(prompt_files, monkeypatch):
    """zipfile itself stops at the declared size; the reader's own check must hold if a stream does not."""
    data = _zip(prompt_files)
    real_open = zipfile.ZipFile.open

    def endless(self, info, *a, **kw):
        if getattr(info, "filename", info) == "prompt.safetensors":
            return io.BytesIO(bytes(info.file_size + 1))
        return real_open(self, info, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", endless)
    with pytest.raises(ArchiveError, match="'prompt.safetensors' unpacks past its declared size"):
        read_archive(data, LIMITS)


def test_unknown_member_and_missing_member(prompt_files):
    with pytest.raises(ArchiveError, match="'run.sh' is not allowed"):
        read_archive(_zip({**prompt_files, "run.sh": b"rm -rf /"}), LIMITS)
    with pytest.raises(ArchiveError, match="missing prompt.safetensors"):
        read_archive(_zip({"prompt_config.json": prompt_files["prompt_config.json"]}), LIMITS)


def test_symlink_member_is_refused(prompt_files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in prompt_files.items():
            if name != "README.md":
                zf.writestr(name, data)
        info = zipfile.ZipInfo("README.md")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic links"):
        read_archive(buf.getvalue(), LIMITS)


def test_not_a_zip_and_limits(prompt_files):
    with pytest.raises(ArchiveError, match="not a zip archive"):
        read_archive(b"PK\x03\x04 but not really", LIMITS)
    with pytest.raises(ArchiveError, match="over the limit"):
        read_archive(b"x" * (LIMITS.max_archive_bytes + 1), LIMITS)
    many = {**prompt_files, **{f"prompt/{i}": b"" for i in range(10)}}
    with pytest.raises(ArchiveError, match="members, over the limit of 8"):
        read_archive(_zip(many), LIMITS)


def test_zip_bomb_is_refused_by_size_and_ratio(prompt_files):
    bomb = _zip({**prompt_files, "prompt.safetensors": bytes(64 << 20)})
    assert len(bomb) < 1 << 20
    with pytest.raises(ArchiveError, match="unpacks to .* over the limit"):
        read_archive(bomb, LIMITS)
    roomy = ArchiveLimits(max_unpacked_bytes=128 << 20, max_weights_bytes=128 << 20)
    with pytest.raises(ArchiveError, match="compression ratio"):
        read_archive(bomb, roomy)


def test_lying_size_header_is_caught_while_unpacking(prompt_files):
    data = bytearray(_zip({**prompt_files, "prompt.safetensors": bytes(4 << 20)}))
    # shrink the declared size of that member in the local header and the central directory
    real = struct.pack("<I", 4 << 20)
    fake = struct.pack("<I", 1000)
    assert data.count(real) == 2
    data = bytes(data).replace(real, fake)
    with pytest.raises(ArchiveError, match="zip bomb|corrupt"):
        read_archive(data, LIMITS)


def test_duplicate_member_is_refused(prompt_files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in prompt_files.items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning):
            zf.writestr("README.md", b"again")
    with pytest.raises(ArchiveError, match="appears twice"):
        read_archive(buf.getvalue(), LIMITS)
