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


@pytest.mark.parametrize("model_id", ["llava-hf/llava-1.5-7b-hf", "hf:", "s3:bucket/model"])
def test_bad_model_ids_are_usage_errors(model_id):
    with pytest.raises(UsageError, match="hf:<hub id or local dir>"):
        resolve_source(model_id)


def test_hf_prefix_is_stripped():
    assert resolve_source("hf:org/name") == "org/name"
    assert resolve_source("hf:/some/dir") == "/some/dir"


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
