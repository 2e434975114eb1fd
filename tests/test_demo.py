"""`tvp demo` end to end on the shipped zoo (or a smoke-built one when none is shipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvprompt.demo import TUNED, DemoConfig, method_flags, prompt_runs, render
from tvprompt.errors import UsageError
from tvprompt.zoo import catalog as zoo

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHIPPED = [e for e in zoo.list_zoo(Path(zoo.__file__).resolve().parent / "weights") if e.kind == "mllm"]


@pytest.fixture(scope="module")
def zoo_env(tmp_path_factory) -> dict[str, str]:
    """Environment whose zoo is the shipped one, or a smoke build when this checkout ships none."""
    env = {**os.environ, "PYTHONPATH": SRC}
    if SHIPPED:
        env.pop(zoo.ZOO_ENV, None)
        return env
    from tvprompt.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("zoo")
    build_zoo(root, names=["llava-p8", "blip2-opt", "clip-guide"], n_per_task=12, eval_per_task=2, threads=1,
              progress=False, scale=0.005)
    env[zoo.ZOO_ENV] = str(root)
    return env


def test_runs_cover_methods_and_the_ensemble():
    cfg = DemoConfig(ensemble=["zoo:a", "zoo:b"], source="zoo:a")
    runs = prompt_runs(cfg)
    assert [r[0] for r in runs] == ["vp@a", "evp@a", "tvp@a", "vp@a+b", "evp@a+b", "tvp@a+b"]
    with pytest.raises(UsageError, match="ShapeWorld task"):
        DemoConfig(task="cifar10")
    with pytest.raises(UsageError, match="methods"):
        DemoConfig(methods=["sgd"])


def test_tuned_hyperparameters_and_paper_defaults():
    from tvprompt.training.loop import resolve_config

    tuned, paper = DemoConfig(), DemoConfig(paper_defaults=True)
    assert method_flags(tuned, "tvp") == method_flags(paper, "tvp") == {"guide": "zoo:clip-guide"}
    assert method_flags(tuned, "evp") == TUNED["evp"] and method_flags(paper, "evp") == {}
    base = {"sources": ["zoo:a"], "task": "shapeworld_shape", "steps": 1}
    assert resolve_config("evp", flags={**base, **method_flags(tuned, "evp")}).lr == 17.5
    assert resolve_config("evp", flags={**base, **method_flags(paper, "evp")}).lr == 70.0
    assert resolve_config("tvp", flags={**base, **method_flags(paper, "tvp")}).fca == 0.005


def _run(env: dict[str, str], out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tvprompt", "demo", "--quick", "--no-progress", "--output", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_demo_quick_end_to_end_small(zoo_env, tmp_path):
    r = _run({**zoo_env, "OMP_NUM_THREADS": "1"}, tmp_path / "demo", "--methods", "vp", "tvp",
             "--targets", "zoo:llava-p8", "zoo:blip2-opt",
             "--ensemble", "zoo:llava-p8", "zoo:blip2-opt",
             "--steps", "2", "--limit", "10", "--n", "60")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| no prompt |" in r.stdout and "tvp@llava-p8+blip2-opt" in r.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["targets"] == ["zoo:llava-p8", "zoo:blip2-opt"] and summary["metric"] == "top1"
    assert list(summary["prompts"]) == ["pad-only", "vp@llava-p8", "tvp@llava-p8", "vp@llava-p8+blip2-opt",
                                        "tvp@llava-p8+blip2-opt"]
    assert summary["prompts"]["pad-only"]["sources"] == []
    # the thread count changes the trained prompts, so the result names it
    assert summary["platform"]["threads"] == 1 and summary["platform"]["cpu_capability"]
    assert "Trained with 1 CPU thread(s)" in (tmp_path / "demo" / "table.md").read_text()
    pad = json.loads((tmp_path / "demo" / "runs" / "pad-only" / "prompt" / "prompt_config.json").read_text())
    assert pad["prompt_width"] == 30 and pad["method"] == "none"
    trained = json.loads((tmp_path / "demo" / "runs" / "seed0" / "tvp_at_llava-p8" / "prompt" / "prompt_config.json")
                         .read_text())
    # pad-only shrinks the image exactly as the trained prompts do: only the learned border differs
    assert (pad["fit"], pad["resample"]) == (trained["fit"], trained["resample"]) == ("crop", "bicubic")
    for row in summary["prompts"].values():
        for cell in row["cells"].values():
            assert 0.0 <= cell["mean"] <= 1.0 and cell["n"] == 1
    for f in ("table.md", "transfer.png", "eval/seed0/results.json", "eval/seed0/table.md", "data/manifest.jsonl"):
        assert (tmp_path / "demo" / f).is_file(), f
    assert render(summary).splitlines()[0].startswith("# tvp demo: shapeworld_shape")
    prompt = tmp_path / "demo" / "runs" / "seed0" / "tvp_at_llava-p8" / "prompt" / "prompt_config.json"
    cfg = json.loads(prompt.read_text())
    assert cfg["method"] == "tvp" and cfg["prompt_width"] == 30


@pytest.mark.slow
def test_demo_quick_default(zoo_env, tmp_path):
    r = _run(zoo_env, tmp_path / "demo")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report written" in r.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    # by default one source model, every method, every zoo MLLM as a target; no ensemble
    assert list(summary["prompts"]) == ["pad-only", "vp@llava-p8", "evp@llava-p8", "tvp@llava-p8"]
    assert len(summary["targets"]) == len(SHIPPED or ["llava-p8", "blip2-opt"])


def test_tuning_grid_gives_every_method_the_same_budget():
    from tvprompt.demo import TUNING_FACTORS, choose_step_size, tuning_grid
    from tvprompt.training.config import PRESETS

    grid = tuning_grid()
    assert set(grid) == {"vp", "evp", "tvp"} and {len(v) for v in grid.values()} == {len(TUNING_FACTORS)}
    for method, values in grid.items():
        assert values == [PRESETS[method]["lr"] * f for f in TUNING_FACTORS]
        # what the demo runs is a point of that grid (chosen by `tvp demo --tune`), or the released value
        assert TUNED[method].get("lr", PRESETS[method]["lr"]) in values
    assert choose_step_size([10.0, 40.0, 160.0], {"10": 0.5, "40": 0.6, "160": 0.7}) == 160.0
    assert choose_step_size([10.0, 40.0, 160.0], {"10": 0.7, "40": 0.7, "160": 0.7}) == 40.0  # tie: released
    assert choose_step_size([10.0, 40.0, 160.0], {"10": 0.7, "40": 0.5, "160": 0.7}) == 10.0  # then smaller


def test_demo_tune_scores_the_grid_on_validation_only(zoo_env, tmp_path):
    r = _run(zoo_env, tmp_path / "demo", "--tune", "--methods", "vp", "evp", "--steps", "2", "--n", "60",
             "--seeds", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "demo" / "tuning" / "tuning.json").read_text())
    assert result["split"] == "val" and set(result["grid"]) == {"vp", "evp"} and result["seeds"] == [0, 1]
    for method, values in result["grid"].items():
        scores, per_seed = result["scores"][method], result["scores_per_seed"][method]
        assert set(scores) == {f"{v:g}" for v in values} and all(0 <= s <= 1 for s in scores.values())
        # a grid point's score is the mean over its training seeds; the best mean is chosen
        for lr, score in scores.items():
            assert len(per_seed[lr]) == 2 and score == pytest.approx(sum(per_seed[lr]) / 2)
        assert scores[f"{result['chosen'][method]['lr']:g}"] == max(scores.values())
    # one evaluation of every tuning prompt, on the validation split (never test), the clean cell once
    results = json.loads((tmp_path / "demo" / "tuning" / "eval" / "results.json").read_text())
    assert results["setup"]["split"] == "val" and len(results["transfer"]) == 2 * 3 * 2
    cells = [p.name for p in (tmp_path / "demo" / "tuning" / "eval" / "cells").glob("*.json")]
    assert sum("__none-" in c for c in cells) == 1
    seed_dirs = sorted(p.name for p in (tmp_path / "demo" / "tuning" / "runs").iterdir())
    assert "vp-lr10-seed0" in seed_dirs and "vp-lr10-seed1" in seed_dirs
    assert not (tmp_path / "demo" / "eval").exists() and "γ = ×0.25" in r.stdout
