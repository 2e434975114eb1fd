"""`tvp analyze NAME --reduced` end to end: real trainer, tasks, data and a tiny HF model (slow)."""

from __future__ import annotations

import json

import pytest

from tvprompt.models.tiny import build_tiny_model

from ._data_fixtures import write_cifar10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    write_cifar10(root / "cifar")
    write_cifar10(root / "cifar2")
    return root, f"hf:{build_tiny_model('llava', root / 'llava', seed=0)}"


def common(root, model):
    return ["--model", model, "--task", "cifar10", "--data", root / "cifar", "--limit", "4", "--batch-size", "4",
            "--image-size", "32", "--reduced"]


def training(model):
    return ["--source", model, "--method", "tvp", "--tse", "0", "--train-batch-size", "4", "--width", "4"]


@pytest.mark.slow
@pytest.mark.parametrize("name,extra,file,rows", [
    ("width", ["--widths", "2", "4"], "width", 2),
    ("data-scale", ["--fractions", "0.5", "1"], "data_scale", 2),
    ("cross-dataset", ["--eval", "cifar10=CIFAR2"], "cross_dataset", 1),
    ("corruption", [], "corruption", 3),
])
def test_analysis_commands_reduced(world, tmp_path, tvp, name, extra, file, rows):
    root, model = world
    extra = [x.replace("CIFAR2", str(root / "cifar2")) for x in extra]
    r = tvp("analyze", name, *common(root, model), *training(model), *extra, "--output", tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / f"{file}.json").read_text())
    assert doc["reduced"] is True and doc["analysis"] == file
    assert (tmp_path / f"{file}.png").stat().st_size > 0
    table = [line for line in (tmp_path / f"{file}.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == rows + 1
    trained = list((tmp_path / "train").glob("*/prompt/prompt.safetensors"))
    assert len(trained) == {"width": 2, "data-scale": 2}.get(name, 1)
    hp = json.loads((trained[0].parent / "prompt_config.json").read_text())["hyperparameters"]
    assert hp["steps"] == 2 and hp["tse"] == 0


@pytest.mark.slow
def test_efficiency_command_reduced(world, tmp_path, tvp):
    pytest.importorskip("peft")
    root, model = world
    r = tvp("analyze", "efficiency", "--model", model, "--task", "cifar10", "--data", root / "cifar", "--reduced",
            "--image-size", "32", "--width", "4", "--output", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {row["method"]: row for row in json.loads((tmp_path / "efficiency.json").read_text())["rows"]}
    assert set(rows) == {"prompt", "lora", "full"} and all(x["status"] == "ok" for x in rows.values())
    assert rows["prompt"]["trainable_params"] == 3 * (32 * 32 - 24 * 24)
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"] == rows["full"]["total_params"]


def test_analyze_usage_errors(tvp, tmp_path):
    r = tvp("analyze", "ablation", "--model", "m", "--task", "t", "--data", tmp_path, "--source", "m",
            "--output", tmp_path / "o")
    assert r.returncode == 2 and "--guide" in r.stderr
    r = tvp("analyze", "cross-dataset", "--model", "m", "--eval", "nonsense", "--output", tmp_path / "o")
    assert r.returncode == 2 and "TASK=PATH" in r.stderr


@pytest.mark.parametrize("name", ["ablation", "width", "data-scale"])
def test_zero_seeds_is_a_usage_error(tvp, tmp_path, name):
    r = tvp("analyze", name, "--model", "m", "--task", "t", "--data", tmp_path, "--source", "m", "--guide", "g",
            "--seeds", "0", "--output", tmp_path / "o")
    assert r.returncode == 2 and "--seeds 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_width_with_two_seeds_trains_two_different_prompts_on_one_eval_subset(world, tmp_path, tvp):
    root, model = world
    args = ["analyze", "width", *common(root, model), *training(model), "--widths", "4", "--seed", "3",
            "--seeds", "2", "--output", tmp_path]
    r = tvp(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "width.json").read_text())
    assert doc["seeds"] == [3, 4] and doc["setup"]["seed"] == 3 and doc["setup"]["limit"] == 4
    folders = [tmp_path / "train" / f"p_4-seed{s}" for s in (3, 4)]
    configs = [json.loads((f / "prompt" / "prompt_config.json").read_text()) for f in folders]
    assert [c["seed"] for c in configs] == [3, 4]
    weights = [(f / "prompt" / "prompt.safetensors").read_bytes() for f in folders]
    assert weights[0] != weights[1]
    cells = [json.loads(p.read_text()) for p in (tmp_path / "eval" / "cells").glob("*.json")]
    assert len(cells) == 3 and len({tuple(rec["id"] for rec in c["records"]) for c in cells}) == 1
    row = doc["rows"][0]
    assert row["avg_delta"]["n"] == 2 and [p["seed"] for p in row["per_seed"]] == [3, 4]
    stamps = [f.joinpath("recipe.json").stat().st_mtime_ns for f in folders]
    r = tvp(*args)  # rerun: both prompts reused
    assert r.returncode == 0, r.stderr
    assert [f.joinpath("recipe.json").stat().st_mtime_ns for f in folders] == stamps
    assert [(f / "prompt" / "prompt.safetensors").read_bytes() for f in folders] == weights


def test_efficiency_refuses_several_processes(tvp, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = tvp("analyze", "efficiency", "--model", "m", "--task", "t", "--data", tmp_path, "--output", tmp_path / "o")
    assert r.returncode == 2 and "without accelerate launch" in r.stderr
    assert not (tmp_path / "o").exists()


def test_attention_refuses_several_processes(tvp, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = tvp("analyze", "attention", "--prompt", tmp_path, "--model", "m", "--task", "t", "--data", tmp_path,
            "--output", tmp_path / "o")
    assert r.returncode == 2 and "draws a few images: run it without accelerate launch" in r.stderr
    assert not (tmp_path / "o").exists()


def test_lr_reaches_the_training_config(tmp_path):
    from tvprompt.cli import build_parser
    from tvprompt.cli.analyze import _recipe
    from tvprompt.training.config import resolve_config

    base = ["analyze", "ablation", "--source", "zoo:a", "--guide", "zoo:g", "--model", "zoo:a", "--task",
            "shapeworld_shape", "--data", str(tmp_path), "--output", str(tmp_path / "out")]
    tuned = _recipe(build_parser().parse_args([*base, "--lr", "2.5"]))
    preset = _recipe(build_parser().parse_args(base))
    assert tuned.extra == {"lr": 2.5} and preset.extra == {}
    flags = {"sources": ["zoo:a"], "task": "shapeworld_shape", "steps": 1}
    assert resolve_config("tvp", flags={**flags, **tuned.extra}).lr == 2.5
    assert resolve_config("tvp", flags={**flags, **preset.extra}).lr == 10.0
