"""Model ids, family detection and registration rules."""

from __future__ import annotations

import json

import pytest

from tvprompt.errors import TvpError, UsageError
from tvprompt.models import registry
from tvprompt.models.registry import list_families, load_adapter, register_family, resolve_source


def test_llava_is_registered_and_families_are_sorted():
    families = list_families()
    assert "llava" in families and families == sorted(families)
    assert "tvp" not in families


def test_duplicate_and_reserved_keys_are_refused():
    cls = registry.get_family("llava")
    assert register_family("llava")(cls) is cls  # re-registering the same class is a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_family("llava")(type("Other", (), {}))
    with pytest.raises(ValueError, match="tvp"):
        register_family("tvp")


@pytest.mark.parametrize("model_id", ["no-such-local-dir", "hf:", "s3:bucket/model", "a/b/c"])
def test_bad_model_ids_are_usage_errors(model_id):
    with pytest.raises(UsageError, match="hf:<hub id or local dir>"):
        resolve_source(model_id)


def test_hf_prefix_is_stripped_and_plain_hub_ids_and_dirs_are_accepted(tmp_path):
    assert resolve_source("hf:org/name") == "org/name"
    assert resolve_source("hf:/some/dir") == "/some/dir"
    assert resolve_source("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert resolve_source("llava-hf/llava-1.5-7b-hf@v2") == "llava-hf/llava-1.5-7b-hf@v2"
    assert resolve_source(str(tmp_path)) == str(tmp_path)


def _offline_cache(monkeypatch, cache):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_plain_hub_id_offline_without_cache_fails_in_one_line_fast(tmp_path, monkeypatch):
    import time

    _offline_cache(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(TvpError) as err:
        load_adapter("llava-hf/llava-1.5-7b-hf", device="cpu")
    assert time.perf_counter() - start < 5
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE" in str(err.value) and "llava-1.5-7b-hf" in str(err.value)


def test_hub_ids_and_revisions_load_from_the_hub_cache(tmp_path, monkeypatch):
    """A cached snapshot per revision; ``org/name@rev`` and ``revision=`` pick it, and only its files are read."""
    _offline_cache(monkeypatch, tmp_path)
    repo = tmp_path / "models--org--tiny"
    for ref, sha, model_type in (("main", "1" * 40, "bert"), ("v2", "2" * 40, "roberta")):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text(json.dumps({"model_type": model_type}))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    # bert/roberta are no MLLM family: the error names the model_type, so it shows which snapshot was read
    with pytest.raises(UsageError, match="model_type 'bert'"):
        load_adapter("org/tiny")
    with pytest.raises(UsageError, match="model_type 'roberta'"):
        load_adapter("org/tiny@v2")
    with pytest.raises(UsageError, match="model_type 'roberta'"):
        load_adapter("hf:org/tiny", revision="v2")
    with pytest.raises(UsageError, match="a local directory has no revision"):
        load_adapter(str(repo / "snapshots" / ("1" * 40)), revision="v2")


def test_zoo_ids_give_a_clear_error_for_unknown_names():
    with pytest.raises(TvpError):
        resolve_source("zoo:no-such-model-xyz")


def test_directory_without_config_is_a_data_error(tmp_path):
    with pytest.raises(TvpError, match="no config.json"):
        load_adapter(f"hf:{tmp_path}")


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="model_type 'bert' is not supported.*llava"):
        load_adapter(f"hf:{tmp_path}")


def test_config_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(TvpError, match="model_type"):
        load_adapter(f"hf:{tmp_path}")


def test_a_file_is_not_a_model_directory(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(UsageError, match="expected a model directory"):
        load_adapter(f"hf:{path}")


def test_bad_dtype_and_device_are_usage_errors(tmp_path):
    from tvprompt.models.hf import resolve_device, resolve_dtype

    with pytest.raises(UsageError, match="dtype"):
        resolve_dtype("float8", resolve_device("cpu")[0])
    with pytest.raises(UsageError, match="device"):
        resolve_device("gpu0")
    import torch

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
