"""Transfer evaluation on a toy adapter/task: records, Δ bookkeeping, ranking, resume, report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tvprompt.errors import UsageError
from tvprompt.evaluation.evaluate import CLEAN, EvalSetup, cell_key, evaluate, metric_delta, normalize_answer
from tvprompt.evaluation.report import render_table, write_report
from tvprompt.prompt import VisualPrompt

from .eval_toys import ToyAdapter, ToySpec, make_prompt, toy_backends, toy_dataset, toy_iter_batches

MODELS = ["toy:a", "toy:b", "toy:c"]


@pytest.fixture
def prompts(tmp_path):
    return [make_prompt(tmp_path / "red_tvp", 0.95, channel=0, sources=["toy:a"]),
            make_prompt(tmp_path / "grey_vp", 0.5, method="vp", sources=["toy:b"])]


def run(tmp_path, prompts, calls, models=MODELS, **kw):
    backend_kw = kw.pop("b", {})
    setup = EvalSetup(task="toy", data="unused", batch_size=kw.pop("batch_size", 4), **kw)
    return evaluate(prompts, models, setup, tmp_path / "out", backends=toy_backends(calls, **backend_kw))


def test_matrix_results_and_report_are_consistent(tmp_path, prompts):
    calls: dict = {}
    res = run(tmp_path, prompts, calls)
    out = tmp_path / "out"
    assert calls["loads"] == MODELS  # each model loaded once, in order
    assert res["primary_metric"] == "top1"
    cells = {(c["model"], c["prompt"] or CLEAN): c["metrics"] for c in res["cells"]}
    assert len(cells) == 3 * 3
    for p in ("tvp@a", "vp@b"):
        deltas = []
        for m in MODELS:
            row = res["transfer"][p][m]
            assert row["clean"] == cells[(m, CLEAN)] and row["prompted"] == cells[(m, p)]
            assert row["delta"]["top1"] == pytest.approx(cells[(m, p)]["top1"] - cells[(m, CLEAN)]["top1"])
            deltas.append(row["delta"]["top1"])
        assert res["average_delta"][p]["all"]["top1"] == pytest.approx(np.mean(deltas))
    # the source model is excluded from the targets-only mean
    tgt = [res["transfer"]["tvp@a"][m]["delta"]["top1"] for m in ("toy:b", "toy:c")]
    assert res["transfer"]["tvp@a"]["toy:a"]["source"] and not res["transfer"]["tvp@a"]["toy:b"]["source"]
    assert res["average_delta"]["tvp@a"]["targets"]["top1"] == pytest.approx(np.mean(tgt))
    # a red border pushes the toy models towards "red": the prompt must change predictions
    assert any(res["transfer"]["tvp@a"][m]["delta"]["top1"] != 0 for m in MODELS)
    assert set(res["versions"]) >= {"tvprompt", "torch", "python"}

    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 3 * 10
    for m in MODELS:  # per-sample records reproduce the cell metric
        recs = [r for r in lines if r["model"] == m and r["prompt"] == "tvp@a"]
        assert np.mean([r["pred"] == r["label"] for r in recs]) == pytest.approx(cells[(m, "tvp@a")]["top1"])
        assert all(r["pred"] == int(np.argmax(r["scores"])) for r in recs)

    written = write_report(out)
    names = {p.name for p in written}
    assert {"table.md", "delta.png", "prompt_tvp@a.png", "prompt_vp@b.png"} <= names
    for p in written:
        assert p.stat().st_size > 0
    table = (out / "table.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith("| ")]
    assert rows[0].split(" | ")[2:5] == ["a", "b", "c"]
    red = next(r for r in rows if r.startswith("| tvp@a"))
    cols = [c.strip() for c in red.strip("|").split("|")]
    assert cols[2].startswith("—")  # toy:a is tvp@a's source
    assert cols[5] == f"{100 * res['average_delta']['tvp@a']['all']['top1']:+.1f}"
    assert cols[6] == f"{100 * res['average_delta']['tvp@a']['targets']['top1']:+.1f}"
    assert f"{100 * cells[('toy:b', 'tvp@a')]['top1']:.1f}" in cols[3]
    assert table == render_table(json.loads((out / "results.json").read_text()))


def brute_force_preds(model_id, prompt_dir, dataset, spec, image_size=32):
    """One adapter call per (sample, choice): no batching, no grouping."""
    adapter = ToyAdapter(model_id, {})
    prompt = VisualPrompt.from_pretrained(prompt_dir) if prompt_dir else None
    preds = []
    for batch in toy_iter_batches(dataset, 1, image_size=image_size):
        x = batch.images if prompt is None else prompt.apply(batch.images).detach()
        s = batch.samples[0]
        scores = [float(adapter.score_choices(x, [spec.prompt_for(s, "toy")], [c])[0, 0])
                  for c in spec.choice_texts_for(s)]
        preds.append(int(np.argmax(scores)))
    return preds


def test_ranking_accuracy_equals_brute_force(tmp_path, prompts):
    data = toy_dataset(11, choices_per_sample=True)  # two choice sets in every batch
    calls: dict = {}
    res = run(tmp_path, prompts, calls, models=["toy:a", "toy:b"], batch_size=4, b={"dataset": data})
    lines = [json.loads(x) for x in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    spec = ToySpec()
    for m in ("toy:a", "toy:b"):
        for pdir, pname in [(None, None), (prompts[0], "tvp@a"), (prompts[1], "vp@b")]:
            preds = brute_force_preds(m, pdir, data, spec)
            got = [r["pred"] for r in lines if r["model"] == m and r["prompt"] == pname]
            assert got == preds
            acc = np.mean([p == s.label for p, s in zip(preds, data, strict=True)])
            metrics = res["clean"][m] if pname is None else res["transfer"][pname][m]["prompted"]
            assert metrics["top1"] == pytest.approx(acc)
    # batched: per model and batch one call per choice set covering all three cells (3 batches x 2 sets)
    assert calls["score_choices"] == 2 * 3 * 2


def test_batch_size_does_not_change_results(tmp_path, prompts):
    a = run(tmp_path / "a", prompts, {}, batch_size=3)
    b = run(tmp_path / "b", prompts, {}, batch_size=10)
    assert a["transfer"] == b["transfer"]


def test_num_workers_is_runtime_only(tmp_path, prompts):
    """Worker processes change how images are decoded, not what: same results, no recomputation."""
    calls: dict = {}
    first = run(tmp_path, prompts, calls, num_workers=0)
    calls.clear()
    again = run(tmp_path, prompts, calls, num_workers=2)
    assert "score_choices" not in calls and again["transfer"] == first["transfer"]
    with pytest.raises(UsageError, match="--num-workers"):
        EvalSetup(task="toy", data="unused", num_workers=-1)


def test_resume_skips_finished_cells_and_recomputes_stale_ones(tmp_path, prompts):
    calls: dict = {}
    first = run(tmp_path, prompts[:1], calls)
    assert calls["images"] == 3 * 2 * 10  # 3 models × (clean, red) × 10 samples
    calls.clear()
    again = run(tmp_path, prompts[:1], calls)
    assert "loads" not in calls and "score_choices" not in calls  # nothing recomputed, no model loaded
    assert again["transfer"] == first["transfer"]
    # adding a prompt computes only its cells
    run(tmp_path, prompts, calls)
    assert calls["images"] == 3 * 1 * 10
    # a changed prompt file makes its cells stale
    calls.clear()
    make_prompt(prompts[1], 0.2, method="vp", sources=["toy:b"])
    run(tmp_path, prompts, calls)
    assert calls["images"] == 3 * 1 * 10
    # a different --limit is a different experiment: everything recomputed
    calls.clear()
    res = run(tmp_path, prompts, calls, limit=5)
    assert calls["images"] == 3 * 3 * 5
    assert {c["n"] for c in res["cells"]} == {5}


def test_open_task_uses_generation_and_normalised_match(tmp_path, prompts):
    calls: dict = {}
    spec = ToySpec(kind="open", metrics=["exact_match"])
    setup = EvalSetup(task="toy", data="unused", batch_size=4)
    res = evaluate(prompts[:1], ["toy:a"], setup, tmp_path / "out", backends=toy_backends(calls, spec=spec))
    assert calls["generate"] == 3 and "score_choices" not in calls
    lines = [json.loads(x) for x in (tmp_path / "out/samples.jsonl").read_text().splitlines()]
    for r in lines:
        assert r["correct"] == (normalize_answer(r["pred_text"]) == normalize_answer(r["answer"]))
    assert any(r["correct"] for r in lines)
    assert res["primary_metric"] == "exact_match"
    clean = [r["correct"] for r in lines if r["prompt"] is None]
    assert res["clean"]["toy:a"]["exact_match"] == pytest.approx(np.mean(clean))


def test_cell_keys_do_not_collide():
    long = "hf:/" + "x" * 100
    keys = {cell_key(m, p) for m in ("hf:a/b", "hf:a_b", long + "a", long + "b") for p in ("p", "p?", CLEAN)}
    assert len(keys) == 12
    assert all(len(k) < 130 and "/" not in k for k in keys)


def test_metric_delta_skips_non_numbers():
    assert metric_delta({"top1": 0.7, "n": 10.0, "x": "s", "auc": 0.6},
                        {"top1": 0.5, "n": 10.0, "auc": 0.6}) == pytest.approx({"top1": 0.2, "auc": 0.0})


def test_tsne_features_and_plot(tmp_path, prompts):
    run(tmp_path, prompts, {}, tsne=True)
    out = tmp_path / "out"
    feats = np.load(out / "features" / f"{cell_key('toy:a', 'tvp@a')}.npy")
    assert feats.shape == (10, 3)
    written = write_report(out, tsne=True)
    assert {"tsne_a.png", "tsne_b.png", "tsne_c.png"} <= {p.name for p in written}


def test_tsne_rerun_reuses_metrics_but_adds_features(tmp_path, prompts):
    calls: dict = {}
    first = run(tmp_path, prompts[:1], calls, models=["toy:a"])
    calls.clear()
    second = run(tmp_path, prompts[:1], calls, models=["toy:a"], tsne=True)  # features missing: one pass
    assert calls["loads"] == ["toy:a"] and (tmp_path / "out" / "features" / f"{cell_key('toy:a', CLEAN)}.npy").is_file()
    assert second["transfer"] == first["transfer"]
    calls.clear()
    run(tmp_path, prompts[:1], calls, models=["toy:a"])  # metrics and features present: nothing to do
    assert "loads" not in calls


def test_usage_errors(tmp_path, prompts):
    with pytest.raises(UsageError, match="twice"):
        run(tmp_path, prompts, {}, models=["toy:a", "toy:a"])
    with pytest.raises(UsageError, match="--limit"):
        EvalSetup(task="t", data="d", limit=0)


def test_corruption_reaches_the_dataset(tmp_path, prompts):
    calls: dict = {}
    run(tmp_path, prompts[:1], calls, models=["toy:a"], corruption="gaussian_noise", severity=2)
    assert calls["open_kwargs"] == {"corruption": "gaussian_noise", "severity": 2, "corruption_strength": "cifar10c"}


def test_the_corruption_strength_reaches_the_dataset_and_the_fingerprint(tmp_path, prompts):
    calls: dict = {}
    res = run(tmp_path, prompts[:1], calls, models=["toy:a"], corruption="contrast", severity=3,
              corruption_strength="imagenetc")
    assert calls["open_kwargs"] == {"corruption": "contrast", "severity": 3, "corruption_strength": "imagenetc"}
    assert res["setup"]["corruption_strength"] == "imagenetc"
    before = {c["fingerprint"] for c in res["cells"]}
    other = run(tmp_path, prompts[:1], {}, models=["toy:a"], corruption="contrast", severity=3)
    assert before.isdisjoint(c["fingerprint"] for c in other["cells"])  # cifar10c cells are not reused
    with pytest.raises(UsageError, match="--corruption-strength"):
        EvalSetup(task="t", data="d", corruption="fog", corruption_strength="imagenet")


def test_prompt_applied_on_the_adapter_device(tmp_path, prompts):
    # clean and prompted passes go through the same adapter call: half the images are prompted
    seen = []
    orig = ToyAdapter.score_choices

    def spy(self, pixels, p, c):
        seen.append(pixels.clone())
        return orig(self, pixels, p, c)

    ToyAdapter.score_choices = spy
    try:
        run(tmp_path, prompts[:1], {}, models=["toy:a"], batch_size=10)
    finally:
        ToyAdapter.score_choices = orig
    x = seen[0]
    assert x.shape == (20, 3, 32, 32)
    red = VisualPrompt.from_pretrained(prompts[0])
    torch.testing.assert_close(x[10:], red.apply(x[:10]).detach())
