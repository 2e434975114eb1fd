"""Prompts on the Hugging Face Hub, offline: a cache laid out as huggingface_hub lays it, a mocked HfApi."""

import json
import time
from pathlib import Path

import pytest
import torch

from tvprompt import PromptFileError, VisualPrompt
from tvprompt.hub import PROMPT_FILES
from tvprompt.prompt import card_metadata, model_card

SHA1 = "a" * 40
SHA2 = "b" * 40


def _prompt(seed: int = 0, **kw) -> VisualPrompt:
    cfg = {"image_height": 32, "image_width": 32, "prompt_width": 4, "task": "shape", "method": "tvp"}
    prompt = VisualPrompt(**{**cfg, **kw})
    with torch.no_grad():
        prompt.delta.copy_(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    prompt.project_()
    return prompt


def _cache_repo(cache: Path, repo: str, sha: str, prompt: VisualPrompt, ref: str | None = "main") -> Path:
    """Lay a prompt out as huggingface_hub's cache does: models--u--r/{snapshots/<sha>/..., refs/<ref>}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = prompt.save_pretrained(root / "snapshots" / sha)
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache in tmp_path (env for subprocesses, constants for this process)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_from_pretrained_loads_a_hub_repo_from_the_cache(hub_cache):
    main, v2 = _prompt(0), _prompt(1)
    _cache_repo(hub_cache, "alice/shape-prompt", SHA1, main)
    _cache_repo(hub_cache, "alice/shape-prompt", SHA2, v2, ref="v2")
    got = VisualPrompt.from_pretrained("alice/shape-prompt")
    assert torch.equal(got.delta, main.delta) and got.config.prompt_width == 4
    assert torch.equal(VisualPrompt.from_pretrained("alice/shape-prompt", revision="v2").delta, v2.delta)
    assert torch.equal(VisualPrompt.from_pretrained("alice/shape-prompt@v2").delta, v2.delta)
    assert torch.equal(VisualPrompt.from_pretrained("hf:alice/shape-prompt").delta, main.delta)


def test_hub_prompts_are_validated_like_local_ones(hub_cache):
    snap = _cache_repo(hub_cache, "alice/broken", SHA1, _prompt())
    cfg = json.loads((snap / "prompt_config.json").read_text())
    cfg["shape"] = "hexagon"
    (snap / "prompt_config.json").write_text(json.dumps(cfg))
    with pytest.raises(PromptFileError, match="hexagon"):
        VisualPrompt.from_pretrained("alice/broken")


def test_a_repo_without_prompt_files_is_refused(hub_cache):
    root = hub_cache / "models--alice--weights" / "snapshots" / SHA1
    root.mkdir(parents=True)
    (root / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle that must never be read")
    (hub_cache / "models--alice--weights" / "refs").mkdir()
    (hub_cache / "models--alice--weights" / "refs" / "main").write_text(SHA1)
    with pytest.raises(PromptFileError, match="no prompt_config.json"):
        VisualPrompt.from_pretrained("alice/weights")


def test_missing_repo_offline_fails_in_one_line_fast(hub_cache):
    start = time.perf_counter()
    with pytest.raises(PromptFileError) as err:
        VisualPrompt.from_pretrained("alice/nothing-here")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and "alice/nothing-here" in msg and "HF_HUB_OFFLINE" in msg


def test_unreachable_hub_fails_in_one_line_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    start = time.perf_counter()
    with pytest.raises(PromptFileError) as err:
        VisualPrompt.from_pretrained("alice/far-away")
    assert time.perf_counter() - start < 15
    assert "\n" not in str(err.value) and "alice/far-away" in str(err.value)


def test_a_missing_local_dir_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(PromptFileError, match="not a prompt directory"):
        VisualPrompt.from_pretrained(tmp_path / "no" / "such" / "dir")


def test_cli_commands_accept_hub_ids(hub_cache, tmp_path, capsys):
    from PIL import Image

    from tvprompt.cli import main

    prompt = _prompt(3)
    _cache_repo(hub_cache, "alice/shape-prompt", SHA1, prompt)
    assert main(["show", "alice/shape-prompt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_width"] == 4
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "a.png")
    assert main(["apply", "--prompt", "alice/shape-prompt", str(tmp_path / "a.png"), "--output",
                 str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a.png").is_file()
    capsys.readouterr()
    assert main(["show", "alice/missing"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tvp show: error: alice/missing")


class FakeApi:
    """Records what ``push_to_hub`` creates and uploads (the folder is copied before it is deleted)."""

    calls: list = []
    uploaded: dict[str, bytes] = {}

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        FakeApi.calls.append(("upload_folder", repo_id, kw))
        FakeApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{SHA1}"})()


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_to_hub_uploads_the_prompt_files_and_round_trips(fake_api, hub_cache):
    from huggingface_hub import ModelCard

    prompt = _prompt(5, sources=[{"model_id": "hf:llava-hf/llava-1.5-7b-hf", "name": "llava-1.5-7b-hf"}],
                     metrics={"val_accuracy": 0.8125, "selected_step": 40, "steps": 50},
                     data={"path": "data/shape", "val_split": "val"})
    url = prompt.push_to_hub("alice/pushed", private=True)
    assert url.endswith(f"/commit/{SHA1}")
    assert [c[0] for c in fake_api.calls] == ["create_repo", "upload_folder"]
    assert fake_api.calls[0][2]["private"] is True and fake_api.calls[0][2]["exist_ok"] is True
    assert sorted(fake_api.uploaded) == sorted(PROMPT_FILES)
    # what was uploaded loads back, bit for bit, through the Hub cache
    snap = hub_cache / "models--alice--pushed" / "snapshots" / SHA1
    snap.mkdir(parents=True)
    for name, data in fake_api.uploaded.items():
        (snap / name).write_bytes(data)
    (hub_cache / "models--alice--pushed" / "refs").mkdir()
    (hub_cache / "models--alice--pushed" / "refs" / "main").write_text(SHA1)
    back = VisualPrompt.from_pretrained("alice/pushed")
    assert torch.equal(back.delta, prompt.delta) and back.config.metrics["val_accuracy"] == 0.8125
    card = ModelCard(fake_api.uploaded["README.md"].decode())
    assert card.data.library_name == "tvprompt"
    assert card.data.base_model == ["llava-hf/llava-1.5-7b-hf"]
    assert card.data.eval_results[0].metric_value == 0.8125
    assert card.data.eval_results[0].dataset_split == "val"


def test_card_metadata_names_only_hub_sources_as_base_models():
    prompt = _prompt(sources=[{"model_id": "zoo:llava-p8", "name": "llava-p8"},
                              {"model_id": "hf:Salesforce/blip2-opt-2.7b", "name": "blip2-opt-2.7b"},
                              {"model_id": "/abs/local/dir", "name": "dir"}])
    meta = card_metadata(prompt.config)
    assert meta["library_name"] == "tvprompt" and "tvp" in meta["tags"]
    assert meta["base_model"] == ["Salesforce/blip2-opt-2.7b"]
    assert meta["datasets"] == ["shape"]
    assert "model-index" not in meta  # no validation metric, no results claimed
    text = model_card(prompt.config)
    assert text.startswith("---\n") and "# Visual prompt tvp@llava-p8+blip2-opt-2.7b+dir: shape" in text


def test_tvp_push_puts_the_transfer_table_in_the_card(fake_api, tmp_path, monkeypatch):
    from tvprompt.cli import main

    prompt = _prompt(sources=[{"model_id": "zoo:llava-p8", "name": "llava-p8"}])
    pdir = prompt.save_pretrained(tmp_path / "p")
    results = {"primary_metric": "accuracy", "task": {"name": "shape"}, "setup": {"split": "test"},
               "transfer": {"tvp@llava-p8": {
                   "zoo:llava-p8": {"clean": {"accuracy": 0.5}, "prompted": {"accuracy": 0.625},
                                    "delta": {"accuracy": 0.125}, "source": True},
                   "zoo:blip2-opt": {"clean": {"accuracy": 0.25}, "prompted": {"accuracy": 0.25},
                                     "delta": {"accuracy": 0.0}, "source": False}}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    assert main(["push-to-hub", str(pdir), "alice/p", "--results", str(tmp_path / "eval")]) == 0
    card = fake_api.uploaded["README.md"].decode()
    assert "| *zoo:llava-p8* | 0.5000 | 0.6250 | 0.1250 |" in card
    assert "| zoo:blip2-opt | 0.2500 | 0.2500 | 0.0000 |" in card
    assert main(["push-to-hub", str(pdir), "alice/p", "--results", str(tmp_path / "eval"), "--name", "other"]) == 2


def test_push_refuses_a_bad_repo_id():
    from tvprompt import UsageError

    with pytest.raises(UsageError, match="not a Hub repository id"):
        _prompt().push_to_hub("not a repo")
