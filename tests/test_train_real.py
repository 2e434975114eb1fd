"""The trainer on a tiny real-architecture model (LLaVA-1.5 shape, random weights) and a JSONL manifest task."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tvprompt.models.guide import build_tiny_guide
from tvprompt.models.registry import load_adapter, load_guide
from tvprompt.models.tiny import build_tiny_model
from tvprompt.prompt import VisualPrompt
from tvprompt.training.checkpoint import load_checkpoint
from tvprompt.training.loop import resolve_config, train

from .tiny_task import write_task

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"batch_size": 8, "image_size": 64, "width": 8, "progress": False, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model dir, task yaml, manifest): the majority class is the one the untrained model does not prefer."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real")
    model = build_tiny_model("llava", root / "llava", seed=0)
    adapter = load_adapter(f"hf:{model}", device="cpu")
    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8)
    images = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = adapter.score_choices(prompt.apply(images), ["How many shapes are there?"] * 4, ["1", "2"])
    preferred = ["1", "2"][int(scores.mean(0).argmax())]
    task, data = write_task(root, majority="2" if preferred == "1" else "1")
    return model, task, data


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_tiny_guide("clip", tmp_path_factory.mktemp("clip") / "clip", seed=0)


def _cfg(world, out, method="evp", **flags):
    model, task, data = world
    return resolve_config(method, flags={"sources": [f"hf:{model}"], "task": str(task), "data": str(data),
                                          "output": str(out), **COMMON, **flags})


def test_evp_loss_falls_and_validation_accuracy_rises(world, tmp_path):
    result = train(_cfg(world, tmp_path, steps=12, val_every=6, lr=10.0))
    llm = [r["llm"] for r in result.history if "llm" in r]
    val = [r for r in result.history if "accuracy" in r]
    assert [r["step"] for r in val] == [0, 6, 12]
    assert sum(llm[-3:]) / 3 < sum(llm[:3]) / 3
    assert val[0]["accuracy"] <= 0.5 < result.best_metric
    saved = VisualPrompt.from_pretrained(tmp_path / "prompt")
    assert saved.config.metrics["val_accuracy"] == result.best_metric
    assert saved.config.task == "toy-shapes" and saved.config.choices == ["1", "2"]
    assert saved.config.sources[0]["family"] == "llava"
    assert saved.config.templates["instruction"] == "How many shapes are there?"


def test_tvp_fca_with_real_features_is_zero_at_zero_delta_then_grows(world, tmp_path):
    result = train(_cfg(world, tmp_path, method="tvp", steps=3, tse=0.0, fca=0.5, val_split="none"))
    fca = [r["fca"] for r in result.history if "fca" in r]
    assert abs(fca[0]) < 1e-9  # δ = 0 at the first step: prompted == shrunk reference
    assert fca[1] > 1e-6 and fca[2] > 1e-6


def test_ensemble_of_two_real_families(world, tmp_path):
    model, task, data = world
    nxt = build_tiny_model("llava_next", tmp_path / "llava_next", seed=1)
    cfg = _cfg(world, tmp_path / "out", method="tvp", steps=2, tse=0.0, fca=0.5, val_every=2)
    cfg.sources = [f"hf:{model}", f"hf:{nxt}"]
    result = train(cfg)
    val = [r for r in result.history if "accuracy" in r][-1]
    assert {"accuracy/llava", "accuracy/llava_next"} <= set(val)
    assert val["accuracy"] == pytest.approx((val["accuracy/llava"] + val["accuracy/llava_next"]) / 2)
    saved = VisualPrompt.from_pretrained(tmp_path / "out" / "prompt")
    assert [s["family"] for s in saved.config.sources] == ["llava", "llava_next"]


def test_tvp_with_a_real_clip_guide_encodes_task_texts_once(world, clip, tmp_path):
    guide = load_guide(f"hf:{clip}", device="cpu")
    calls = []
    encode_text = guide.encode_text
    guide.encode_text = lambda texts: calls.append(list(texts)) or encode_text(texts)
    cfg = _cfg(world, tmp_path, method="tvp", steps=4, guide=f"hf:{clip}", tse=0.5, val_split="none")
    result = train(cfg, guide=guide)
    assert calls == [["a photo of 1 shapes", "a photo of 2 shapes"]]  # once per run, every task text
    tse = [r["tse"] for r in result.history if "tse" in r]
    assert all(t != 0.0 for t in tse)
    assert abs(tse[0]) <= guide.logit_scale  # s·cos is bounded by the logit scale
    saved = VisualPrompt.from_pretrained(tmp_path / "prompt")
    assert saved.config.hyperparameters["guide"] == f"hf:{clip}"


def _tvp(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tvprompt", "train", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_writes_a_prompt_directory(world, clip, tvp, tmp_path):
    model, task, data = world
    r = tvp("train", "--method", "tvp", "--guide", f"hf:{clip}", "--source", f"hf:{model}", "--task", task, "--data",
            data,
            "--output", tmp_path / "out", "--steps", 3, "--batch-size", 4, "--image-size", 64, "--width", 8,
            "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'out' / 'prompt'}" in r.stdout
    prompt = VisualPrompt.from_pretrained(tmp_path / "out" / "prompt")
    assert prompt.config.method == "tvp" and prompt.config.hyperparameters["fca"] == 0.005
    assert prompt.config.hyperparameters["tse"] == 0.001
    assert prompt.delta.abs().sum() > 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert rows[-1]["split"] == "val"  # validation at the end on the val split


@pytest.mark.slow
@pytest.mark.ci
def test_cli_end_to_end_kill_and_resume_identical(world, tmp_path):
    model, task, data = world
    args = ["--method", "evp", "--source", f"hf:{model}", "--task", task, "--data", data, "--steps", 8,
            "--batch-size", 4, "--image-size", 64, "--width", 8, "--val-every", 4, "--ckpt-every", 1,
            "--device", "cpu", "--no-progress"]
    full = _tvp(*args, "--output", tmp_path / "full")
    killed = _tvp(*args, "--output", tmp_path / "killed")
    out, rows = tmp_path / "killed" / "metrics.jsonl", []
    k = random.Random(21).randint(2, 6)  # seeded: every run kills at the same step
    t0 = time.time()
    while len(rows) < k:
        assert killed.poll() is None, killed.communicate()
        assert time.time() - t0 < 240
        time.sleep(0.02)
        rows = [x for x in out.read_text().splitlines() if '"loss"' in x] if out.exists() else []
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    assert load_checkpoint(tmp_path / "killed")[0].step >= k - 1
    resumed = _tvp("--resume", "--output", tmp_path / "killed", "--no-progress")
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "wrote" in stdout and "val accuracy" in stdout
    for name in ("prompt", "last"):
        a = VisualPrompt.from_pretrained(tmp_path / "full" / name)
        b = VisualPrompt.from_pretrained(tmp_path / "killed" / name)
        assert torch.equal(a.delta, b.delta), name
    cfg = json.loads((tmp_path / "full" / "prompt" / "prompt_config.json").read_text())
    assert cfg["method"] == "evp" and cfg["hyperparameters"]["steps"] == 8 and cfg["hyperparameters"]["lr"] == 70.0
    assert (tmp_path / "full" / "prompt" / "preview.png").is_file()


def test_tse_on_a_task_without_tse_text_is_a_one_line_usage_error(tmp_path, tvp):
    """Every built-in task has a TSE text; a user's task without one is refused, never run FCA-only."""
    task = tmp_path / "exist.yaml"
    task.write_text("version: 1\nname: my_exist\nkind: yes_no\nformat: manifest\ninstruction: '{question}'\n")
    r = tvp("train", "--method", "tvp", "--source", "zoo:llava-p8", "--guide", "zoo:clip-guide",
            "--task", task, "--data", tmp_path, "--output", tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'my_exist' has no tse_text" in r.stderr and "--tse 0" in r.stderr
    assert not (tmp_path / "run").exists()
