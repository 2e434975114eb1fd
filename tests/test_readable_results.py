"""Readable results: row names, source marks, zero-Δ bars, ticks at the trained widths, t-SNE legends,
efficiency notes."""

import json
from pathlib import Path

import numpy as np
import pytest

import tvprompt.evaluation.report as report

from .eval_toys import make_prompt, toy_backends


@pytest.fixture
def figures(monkeypatch):
    """Capture the matplotlib figures the report helpers save (and still write the files)."""
    captured = []
    save = report._save

    def keep(fig, path):
        captured.append(fig)
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return captured


def test_zero_delta_bars_are_visible_and_source_bars_hatched(tmp_path, figures):
    series = {"tvp@a": [0.0, 2.5, -1.0], "vp@b": [1.0, 0.0, 0.0]}
    sources = {"tvp@a": [True, False, False], "vp@b": [False, True, False]}
    report.bar_chart(["a", "b", "c"], series, tmp_path / "d.png", sources=sources, note="a note")
    ax = figures[0].axes[0]
    bars = [p for p in ax.patches if p.get_width() > 0]
    hatched = [(round(p.get_x() + p.get_width() / 2, 3)) for p in bars if p.get_hatch() == "///"]
    assert len(bars) == 6 and len(hatched) == 2  # exactly the two source cells
    dashes = [line for line in ax.lines if line.get_marker() == "_"]
    zero_x = sorted(round(float(x), 3) for line in dashes for x in line.get_xdata())
    assert len(zero_x) == 3 and all(float(y) == 0 for line in dashes for y in line.get_ydata())
    texts = " ".join(t.get_text() for t in figures[0].texts)
    assert "source model" in texts and "a note" in texts


def test_line_chart_ticks_sit_at_the_trained_widths(tmp_path, figures):
    report.line_chart([10, 20, 30, 45], {"mean": [1.0, 2.0, 0.5, -1.0]}, tmp_path / "w.png", xlabel="p")
    ax = figures[0].axes[0]
    assert list(ax.get_xticks()) == [10, 20, 30, 45]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "30", "45"]


def test_tsne_plot_has_a_legend_of_the_labels(tmp_path, figures):
    from tvprompt.evaluation.evaluate import CELLS_DIR, CLEAN, FEATURES_DIR, cell_key

    (tmp_path / CELLS_DIR).mkdir()
    (tmp_path / FEATURES_DIR).mkdir()
    labels = ["cat", "dog", "cat", "bird", "dog", "bird", "cat", "dog"]
    rng = np.random.default_rng(0)
    for prompt in (CLEAN, "tvp@a"):
        key = cell_key("toy:a", prompt)
        (tmp_path / CELLS_DIR / f"{key}.json").write_text(json.dumps({"records": [{"label": x} for x in labels]}))
        np.save(tmp_path / FEATURES_DIR / f"{key}.npy", rng.normal(size=(8, 5)))
    results = {"models": [{"id": "toy:a", "name": "a"}], "prompts": [{"name": "tvp@a"}]}
    written = report.write_tsne(tmp_path, results)
    assert [p.name for p in written] == ["tsne_a.png"]
    legend = figures[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["bird", "cat", "dog"]


def test_efficiency_says_what_was_skipped_and_that_cpu_timings_are_not_gpu_ones(tmp_path, figures, monkeypatch):
    import tvprompt.evaluation.efficiency as eff

    rows = [{"method": "prompt", "status": "ok", "step_ms": 12.0, "trainable_params": 100, "peak_mem_mib": 5.0,
             "batch_size": 2, "device": "cpu"},
            {"method": "lora", "status": "skipped: peft is not installed", "batch_size": 2, "device": "cpu"}]
    monkeypatch.setattr(eff, "measure", lambda *a, **k: rows)
    eff.efficiency("zoo:llava-p8", "t", "d", tmp_path)
    md = (tmp_path / "efficiency.md").read_text()
    assert "Not in the plot: lora (skipped: peft is not installed)." in md and "not the GPU picture" in md
    texts = " ".join(t.get_text() for t in figures[0].texts)
    assert "not shown: lora" in texts and "not the GPU picture" in texts


def test_eval_rows_are_named_from_the_prompt_config_or_label(tmp_path, monkeypatch, capsys):
    from tvprompt.cli import main
    from tvprompt.evaluation.evaluate import Backends

    monkeypatch.setattr(Backends, "default", classmethod(lambda cls, **kw: toy_backends({})))
    p1 = make_prompt(tmp_path / "prompt", 0.9, sources=["toy:a"])
    p2 = make_prompt(tmp_path / "prompt-2", 0.5, method="vp", sources=["toy:a", "toy:b"])
    base = ["eval", "--model", "toy:a", "toy:b", "--task", "toy", "--data", "unused"]
    assert main([*base, "--prompt", str(p1), str(p2), "--output", str(tmp_path / "o1"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["prompted"]) == ["tvp@a", "vp@a+b"]
    table = (Path(tmp_path / "o1") / "table.md").read_text()
    assert "| tvp@a |" in table and "| vp@a+b |" in table
    assert main([*base, "--prompt", str(p1), "--label", "mine", "--output", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["prompts"][0]["name"] == "mine"
