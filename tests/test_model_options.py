"""Where and how models run: --device, --dtype, --device-map auto, --revision, --trust-remote-code on
train, eval and analyze; plain Hub ids; offline misses fail in one line."""

import time

import pytest

from tvprompt.cli import main
from tvprompt.errors import TvpError, UsageError
from tvprompt.training.config import TrainConfig

from ._data_fixtures import write_cifar10


class Loaded(TvpError):
    """Raised by the stand-in loader once it has recorded its arguments."""


@pytest.fixture
def seen(monkeypatch):
    import tvprompt.models.registry as registry

    calls = []

    def fake_load_adapter(model_id, device=None, dtype="auto", attn_implementation="sdpa",
                          gradient_checkpointing=False, *, revision=None, trust_remote_code=False):
        calls.append({"model_id": model_id, "device": device, "dtype": dtype, "revision": revision,
                      "trust_remote_code": trust_remote_code})
        raise Loaded(f"loaded {model_id}")

    monkeypatch.setattr(registry, "load_adapter", fake_load_adapter)
    return calls


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=4, n_test=4)
    return root


def test_eval_passes_model_options_to_every_load(seen, cifar, tmp_path):
    rc = main(["eval", "--model", "llava-hf/llava-1.5-7b-hf", "--task", "cifar10", "--data", str(cifar),
               "--output", str(tmp_path / "o"), "--device-map", "auto", "--dtype", "bfloat16",
               "--revision", "v2", "--trust-remote-code", "--limit", "2"])
    assert rc == 1
    assert seen == [{"model_id": "llava-hf/llava-1.5-7b-hf", "device": "auto", "dtype": "bfloat16",
                     "revision": "v2", "trust_remote_code": True}]


def test_eval_device_and_device_map_are_exclusive(cifar, tmp_path, capsys):
    rc = main(["eval", "--model", "zoo:llava-p8", "--task", "cifar10", "--data", str(cifar),
               "--output", str(tmp_path / "o"), "--device-map", "auto", "--device", "cpu"])
    assert rc == 2 and "--device-map auto, not both" in capsys.readouterr().err


def test_analyze_passes_model_options_to_loads(seen, cifar, tmp_path):
    from tvprompt import VisualPrompt

    pdir = VisualPrompt(image_height=32, image_width=32, prompt_width=4).save_pretrained(tmp_path / "p")
    rc = main(["analyze", "corruption", "--model", "org/target", "--task", "cifar10", "--data", str(cifar),
               "--prompt", str(pdir), "--corruptions", "gaussian_noise", "--severities", "1", "--limit", "2",
               "--output", str(tmp_path / "o"), "--device", "cpu", "--dtype", "float32"])
    assert rc == 1
    assert seen[0] == {"model_id": "org/target", "device": "cpu", "dtype": "float32", "revision": None,
                       "trust_remote_code": False}


def test_train_config_fields_reach_the_loader(seen):
    from tvprompt.training.distributed import World
    from tvprompt.training.loop import _load_sources

    cfg = TrainConfig(sources=["org/a", "org/b@v1"], device_map="auto", revision="main", trust_remote_code=True)
    with pytest.raises(Loaded):
        _load_sources(cfg, World())
    assert seen[0] == {"model_id": "org/a", "device": "auto", "dtype": "auto", "revision": "main",
                       "trust_remote_code": True}
    with pytest.raises(UsageError, match="not both"):
        TrainConfig(sources=["org/a"], device_map="auto", device="cpu")
    with pytest.raises(UsageError, match="only auto"):
        TrainConfig(device_map="balanced")


def test_train_flags_map_to_config_fields():
    from tvprompt.cli import build_parser
    from tvprompt.cli.train import flag_values

    args = build_parser().parse_args(["train", "--source", "llava-hf/llava-1.5-7b-hf", "--device-map", "auto",
                                      "--revision", "abc123", "--trust-remote-code", "--dtype", "float16"])
    flags = flag_values(args)
    assert flags["sources"] == ["llava-hf/llava-1.5-7b-hf"]
    assert (flags["device_map"], flags["revision"], flags["trust_remote_code"], flags["dtype"]) == (
        "auto", "abc123", True, "float16")


def test_offline_hub_model_fails_in_one_line_fast_through_the_cli(cifar, tmp_path, tvp, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    r = tvp("eval", "--model", "llava-hf/llava-1.5-7b-hf", "--task", "cifar10", "--data", cifar,
            "--limit", "2", "--output", tmp_path / "o")
    assert time.perf_counter() - start < 60  # interpreter + torch import; no network wait
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if not line.startswith("INFO ")]
    assert len(err) == 1 and err[0].startswith("tvp eval: error: llava-hf/llava-1.5-7b-hf: HF_HUB_OFFLINE"), r.stderr


@pytest.mark.parametrize("files, calls",
                         [(["model.safetensors", "config.json"], 1), (["pytorch_model.bin", "config.json"], 2)])
def test_hub_models_fetch_pickled_weights_only_without_safetensors(tmp_path, monkeypatch, files, calls):
    import huggingface_hub

    from tvprompt.hub import download_model

    for name in files:
        (tmp_path / name).write_text("x")
    seen = []

    def fake_snapshot_download(repo_id, revision=None, ignore_patterns=None):
        seen.append((repo_id, revision, list(ignore_patterns)))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_model("org/m", "v1") == tmp_path
    assert len(seen) == calls and all(s[:2] == ("org/m", "v1") for s in seen)
    assert "*.bin" in seen[0][2] and "*.h5" in seen[0][2]
    if calls == 2:
        assert "*.bin" not in seen[1][2] and "*.h5" in seen[1][2]
