"""Evaluation through the real task specs, data readers, metrics and tiny HF adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tvprompt.data import Sample
from tvprompt.evaluation.evaluate import Backends, EvalSetup, evaluate
from tvprompt.evaluation.metrics import compute_metrics
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model
from tvprompt.prompt import VisualPrompt
from tvprompt.tasks import load_task

from ._data_fixtures import write_cifar10
from .eval_toys import ToyAdapter, make_prompt, toy_fingerprint, toy_iter_batches


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    write_cifar10(root / "cifar")
    model = build_tiny_model("llava", root / "llava", seed=0)
    return root, f"hf:{model}"


def test_ranking_with_a_real_adapter_equals_per_choice_lm_loss(world, tmp_path):
    torch.set_num_threads(1)
    root, model_id = world
    prompt = make_prompt(tmp_path / "p", 0.7, width=4, size=32)
    setup = EvalSetup(task="cifar10", data=str(root / "cifar"), limit=3, batch_size=3)
    res = evaluate([prompt], [model_id], setup, tmp_path / "out")
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    # brute force: one lm_loss per (sample, choice); score = −mean CE over answer tokens (+EOS)
    from tvprompt.data import iter_batches, open_dataset
    from tvprompt.data.subset import stratified_subset

    spec = load_task("cifar10")
    ds = stratified_subset(open_dataset(spec, root / "cifar", "test"), 3, seed=0)  # the rows --limit 3 takes
    adapter = load_adapter(model_id)
    vp = VisualPrompt.from_pretrained(prompt)
    (batch,) = list(iter_batches(ds, 3, image_size=32))[:1]
    for name, pixels in [(None, batch.images), ("p", vp.apply(batch.images).detach())]:
        recs = [r for r in lines if r["prompt"] == name]
        for i, s in enumerate(batch.samples):
            text = spec.prompt_for(s, adapter.family)
            with torch.no_grad():
                brute = [-float(adapter.lm_loss(pixels[i:i + 1], [text], [c])) for c in spec.choice_texts_for(s)]
            np.testing.assert_allclose(recs[i]["scores"], brute, atol=1e-4)
            assert recs[i]["pred"] == int(np.argmax(brute)) and recs[i]["label"] == spec.label_index(s)
    acc = np.mean([r["pred"] == r["label"] for r in lines if r["prompt"] == "p"])
    assert res["transfer"]["p"][model_id]["prompted"]["top1"] == pytest.approx(acc)


@pytest.mark.slow
def test_tvp_eval_two_prompts_three_models(world, tmp_path, tvp):
    root, m1 = world
    m2 = f"hf:{build_tiny_model('llava', tmp_path / 'm2', seed=1)}"
    m3 = f"hf:{build_tiny_model('llava_next', tmp_path / 'm3', seed=0)}"
    p1 = make_prompt(tmp_path / "tvp", 0.8, width=4, size=32, sources=[m1])
    p2 = make_prompt(tmp_path / "vp", 0.3, width=4, size=32, method="vp")
    args = ["eval", "--prompt", p1, "--prompt", p2, "--model", m1, "--model", m2, "--model", m3, "--task", "cifar10",
            "--data", root / "cifar", "--limit", "4", "--batch-size", "4", "--output", tmp_path / "out", "--tsne"]
    r = tvp(*args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    res = json.loads((out / "results.json").read_text())
    assert len(res["cells"]) == 9 and res["command"].startswith("tvp eval")
    table = (out / "table.md").read_text()
    assert "| no prompt |" in table and "| tvp | tvp | —" in table
    for f in ("delta.png", "prompt_tvp.png", "prompt_vp.png", "tsne_llava.png", "tsne_m2.png", "tsne_m3.png"):
        assert (out / f).stat().st_size > 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    r = tvp(*args)  # resume: every cell reused
    assert r.returncode == 0, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == before
    assert "loading" not in r.stderr


def test_tvp_eval_usage_errors(tvp, tmp_path):
    r = tvp("eval", "--task", "cifar10", "--data", tmp_path, "--output", tmp_path / "o")
    assert r.returncode == 2 and "--model" in r.stderr
    r = tvp("eval", "--model", "hf:x", "--task", "cifar10", "--data", tmp_path, "--limit", "0", "--output", tmp_path)
    assert r.returncode == 2 and "--limit" in r.stderr


def test_eval_takes_several_models_and_prompts_per_flag():
    from tvprompt.cli import build_parser

    args = build_parser().parse_args(["eval", "--model", "zoo:a", "zoo:b", "--model", "zoo:c", "--prompt", "p1", "p2",
                                      "--task", "t", "--data", "d", "--output", "o"])
    assert args.model == ["zoo:a", "zoo:b", "zoo:c"] and args.prompt == ["p1", "p2"]


# --------------------------------------------------- binary tasks: AUC and POPE through the real metrics
def binary_backends(spec, calls):
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(16):
        label = i % 2  # index into ["yes", "no"]
        img = torch.rand(3, 24, 24, generator=g) * 0.6 + (0.4 if label == 0 else 0.0) * (i % 3 != 0)
        data.append(Sample(id=f"m{i}", image=img.clamp(0, 1), answer=["yes", "no"][label], question="Is there a dog?",
                           text="a meme", label=label))
    return Backends(lambda name: spec, lambda *a, **k: data, toy_iter_batches,
                    lambda m: ToyAdapter(m, calls), compute_metrics, toy_fingerprint)


@pytest.mark.parametrize("task", ["hateful_memes", "pope_random"])
def test_auc_and_pope_metrics_flow_through(task, tmp_path):
    from sklearn.metrics import roc_auc_score

    spec = load_task(task)
    prompt = make_prompt(tmp_path / "p", 0.9, width=4, size=32, channel=0)
    res = evaluate([prompt], ["toy:a", "toy:b"], EvalSetup(task=task, data="x", batch_size=5), tmp_path / "out",
                   backends=binary_backends(spec, {}))
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert res["primary_metric"] == spec.metrics[0]
    for m in ("toy:a", "toy:b"):
        for name in (None, "p"):
            recs = [r for r in lines if r["model"] == m and r["prompt"] == name]
            metrics = res["clean"][m] if name is None else res["transfer"]["p"][m]["prompted"]
            assert set(metrics) >= set(spec.metrics)
            y = np.array([r["label"] == 0 for r in recs])
            pred_yes = np.array([r["pred"] == 0 for r in recs])
            if task == "hateful_memes":
                s = np.array([r["scores"] for r in recs])
                p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
                assert metrics["auc"] == pytest.approx(roc_auc_score(y, p[:, 0] - p[:, 1]))
            else:
                tp = (y & pred_yes).sum()
                assert metrics["precision"] == pytest.approx(tp / max(pred_yes.sum(), 1))
                assert metrics["recall"] == pytest.approx(tp / y.sum())
                assert metrics["yes_ratio"] == pytest.approx(pred_yes.mean())
        row = res["transfer"]["p"][m]
        for k in spec.metrics:
            assert row["delta"][k] == pytest.approx(row["prompted"][k] - row["clean"][k])
