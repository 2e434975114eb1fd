"""`--seeds N` for the sweeps (ablation, width, data-scale): one prompt per (variant, training seed), mean ± sd."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tvprompt.errors import UsageError
from tvprompt.evaluation import analyses
from tvprompt.evaluation.analyses import TrainRecipe, ablation, data_scale, width_sweep

from .eval_toys import make_prompt, toy_backends
from .test_analyze import TARGETS, FakeTrainer, setup_


class SeededTrainer(FakeTrainer):
    """As FakeTrainer, but an odd training seed darkens the border: the seeds give different prompts and Δ."""

    def __call__(self, recipe: TrainRecipe, output):
        self.recipes.append(recipe)
        value = 0.3 + 0.5 * (1 + bool(recipe.fca)) / 2 + (0.1 if recipe.tse else 0) - 0.4 * (recipe.seed % 2)
        return make_prompt(output / "prompt", value, width=recipe.width // 5, size=32, channel=0,
                           sources=recipe.sources, method=recipe.method)


@pytest.fixture
def base():
    return TrainRecipe(sources=["toy:a"], task="toy", data="train-data", width=20, guide="toy-guide", seed=5)


def limited():
    return dataclasses.replace(setup_(), limit=6, seed=3)


def stat(values):
    return float(np.mean(values)), float(np.std(values, ddof=1))


def table_rows(md):
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")][1:]


def test_ablation_with_two_seeds_reports_mean_and_sd_of_the_per_seed_runs(tmp_path, base):
    trainer, calls = SeededTrainer(), {}
    doc = ablation(base, TARGETS, limited(), tmp_path, trainer=trainer, backends=toy_backends(calls), reduced=True,
                   seeds=2)
    # each variant trained with seeds 5 and 6, each in its own folder
    assert [(r.fca > 0, r.tse > 0, r.seed) for r in trainer.recipes] == [
        (f, t, s) for f, t in [(False, False), (True, False), (False, True), (True, True)] for s in (5, 6)]
    assert doc["seeds"] == [5, 6] and [r["label"] for r in doc["rows"]] == ["none", "FCA", "TSE", "FCA+TSE"]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(
        f"{v}-seed{s}" for v in ("none", "FCA", "TSE", "FCA_TSE") for s in (5, 6))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    md_rows = table_rows((tmp_path / "ablation.md").read_text())
    assert "mean ± sd (sample sd) over 2 training seeds (5, 6)" in (tmp_path / "ablation.md").read_text()
    saved = json.loads((tmp_path / "ablation.json").read_text())
    any_spread = False
    for row, md_row, saved_row in zip(doc["rows"], md_rows, saved["rows"], strict=True):
        assert saved_row == row and [p["seed"] for p in row["per_seed"]] == [5, 6]
        for p in row["per_seed"]:  # the per-seed numbers are the evaluation's
            for m in TARGETS:
                assert p["delta"][m] == results["transfer"][p["prompt"]][m]["delta"]["top1"]
        cells = [row["delta"][m] for m in TARGETS] + [row["avg_delta"]]
        per_seed = [[p["delta"][m] for p in row["per_seed"]] for m in TARGETS]
        per_seed.append([p["avg_delta"] for p in row["per_seed"]])
        for cell, values, text in zip(cells, per_seed, md_row[1:], strict=True):
            mean, sd = stat(values)
            assert (cell["mean"], cell["sd"], cell["n"]) == (mean, sd, 2)
            assert text == f"{100 * mean:+.1f} ± {100 * sd:.1f}"
            any_spread |= sd > 0
    assert any_spread  # the seeds really gave different results
    # the two seeds' prompts differ
    a, b = (tmp_path / "train" / f"none-seed{s}" / "prompt" / "prompt.safetensors" for s in (5, 6))
    assert a.read_bytes() != b.read_bytes()
    # every (variant, seed) on the same evaluation subset, drawn by the evaluation seed
    for m in TARGETS:
        ids = {c["prompt"]: [r["id"] for r in json.loads(p.read_text())["records"]]
               for p in (tmp_path / "eval" / "cells").glob("*.json")
               if (c := json.loads(p.read_text()))["model"] == m}
        assert len(ids) == 9 and all(len(v) == 6 for v in ids.values())
        assert len({tuple(v) for v in ids.values()}) == 1
    # rerun: same recipes -> no training and no evaluation
    trainer2, calls2 = SeededTrainer(), {}
    again = ablation(base, TARGETS, limited(), tmp_path, trainer=trainer2, backends=toy_backends(calls2),
                     reduced=True, seeds=2)
    assert trainer2.recipes == [] and "loads" not in calls2
    assert again["rows"] == doc["rows"]
    # a third seed trains only the new runs
    trainer3 = SeededTrainer()
    ablation(base, TARGETS, limited(), tmp_path, trainer=trainer3, backends=toy_backends({}), reduced=True, seeds=3)
    assert [r.seed for r in trainer3.recipes] == [7, 7, 7, 7]


def test_ablation_plot_has_error_bars_of_the_sd(tmp_path, base, monkeypatch):
    drawn = {}

    def fake_bar_chart(groups, series, path, **kw):
        drawn.update(series=series, errors=kw.get("errors"))
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(analyses, "bar_chart", fake_bar_chart)
    doc = ablation(base, TARGETS, limited(), tmp_path, trainer=SeededTrainer(), backends=toy_backends({}),
                   reduced=True, seeds=2)
    for row in doc["rows"]:
        assert drawn["series"][row["label"]] == [100 * row["delta"][m]["mean"] for m in TARGETS]
        assert drawn["errors"][row["label"]] == [100 * row["delta"][m]["sd"] for m in TARGETS]


def test_width_with_two_seeds_draws_lines_with_error_bars(tmp_path, base, monkeypatch):
    drawn = {}

    def fake_line_chart(xs, series, path, **kw):
        drawn.update(xs=xs, series=series, errors=kw.get("errors"), title=kw.get("title"))
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(analyses, "line_chart", fake_line_chart)
    trainer = SeededTrainer()
    doc = width_sweep(base, TARGETS, limited(), tmp_path, widths=[10, 20], trainer=trainer,
                      backends=toy_backends({}), seeds=2)
    assert [(r.width, r.seed) for r in trainer.recipes] == [(10, 5), (10, 6), (20, 5), (20, 6)]
    assert drawn["xs"] == [10, 20] and doc["x"] == [10, 20]
    assert drawn["title"] == "prompt width: mean ± sd over 2 training seeds"
    assert drawn["errors"]["mean over models"] == [100 * r["avg_delta"]["sd"] for r in doc["rows"]]
    assert drawn["series"]["mean over models"] == [100 * r["avg_delta"]["mean"] for r in doc["rows"]]
    assert drawn["errors"]["toy:b"] == [100 * r["delta"]["toy:b"]["sd"] for r in doc["rows"]]
    md = (tmp_path / "width.md").read_text()
    assert all(" ± " in c for row in table_rows(md) for c in row[1:])


def test_one_seed_keeps_todays_outputs(tmp_path, base, monkeypatch):
    drawn = {}

    def fake_line_chart(xs, series, path, **kw):
        drawn.update(errors=kw.get("errors"), title=kw.get("title"))
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(analyses, "line_chart", fake_line_chart)
    doc = width_sweep(base, TARGETS, limited(), tmp_path, widths=[10], trainer=SeededTrainer(),
                      backends=toy_backends({}))
    assert "seeds" not in doc and drawn["errors"] is None and drawn["title"] == "prompt width"
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["p_10"]
    assert isinstance(doc["rows"][0]["avg_delta"], float) and "±" not in (tmp_path / "width.md").read_text()


def test_data_scale_takes_seeds(tmp_path, base):
    trainer = SeededTrainer()
    doc = data_scale(base, TARGETS, limited(), tmp_path, fractions=[1.0], trainer=trainer, backends=toy_backends({}),
                     seeds=2)
    assert [r.seed for r in trainer.recipes] == [5, 6] and doc["seeds"] == [5, 6]
    assert (tmp_path / "data_scale.png").stat().st_size > 0  # the real line chart with error bars


@pytest.mark.parametrize("fn", [ablation, width_sweep, data_scale])
def test_zero_seeds_is_refused_before_anything_is_written(tmp_path, base, fn):
    with pytest.raises(UsageError, match="--seeds 0"):
        fn(base, TARGETS, limited(), tmp_path / "out", trainer=SeededTrainer(), backends=toy_backends({}), seeds=0)
    assert not (tmp_path / "out").exists()
