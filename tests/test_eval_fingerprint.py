"""Cached eval cells are reused only when every input is unchanged; --limit draws a stratified subset."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tvprompt.errors import UsageError
from tvprompt.evaluation.evaluate import Backends, EvalSetup, evaluate
from tvprompt.evaluation.fingerprint import data_fingerprint, model_fingerprint, task_fingerprint

from .eval_toys import ToySample, ToySpec, make_prompt, toy_backends, toy_dataset

MODELS = ["toy:a", "toy:b"]


def run(tmp_path, calls, *, spec=None, data="unused", dataset=None, models=MODELS, prompts=(), **kw):
    setup = EvalSetup(task="toy", data=str(data), batch_size=4, **kw)
    return evaluate(list(prompts), models, setup, tmp_path / "out",
                    backends=toy_backends(calls, spec=spec, dataset=dataset))


def test_task_template_edit_recomputes_every_cell(tmp_path):
    calls: dict = {}
    run(tmp_path, calls, spec=ToySpec())
    calls.clear()
    run(tmp_path, calls, spec=ToySpec())
    assert "images" not in calls  # same task contents: reused
    run(tmp_path, calls, spec=ToySpec(instruction="Which colour is it?"))
    assert calls["images"] == 2 * 10  # both models' clean cells recomputed


def test_changed_data_contents_recompute(tmp_path):
    data = tmp_path / "data"
    (data / "red").mkdir(parents=True)
    (data / "red" / "a.txt").write_text("one")
    (data / "big.bin").write_bytes(b"x" * (70 * 1024))
    calls: dict = {}
    run(tmp_path, calls, data=data)
    calls.clear()
    (data / "red" / "a.txt").write_text("one")  # rewritten, same bytes: a small file is compared by hash
    run(tmp_path, calls, data=data)
    assert "images" not in calls
    (data / "red" / "a.txt").write_text("two")
    run(tmp_path, calls, data=data)
    assert calls["images"] == 2 * 10
    calls.clear()
    (data / "green").mkdir()
    (data / "green" / "b.txt").write_text("new file")
    run(tmp_path, calls, data=data)
    assert calls["images"] == 2 * 10


def test_new_model_revision_recomputes_only_that_model(tmp_path):
    revision = {"toy:a": "r1", "toy:b": "r1"}
    calls: dict = {}

    def backends():
        b = toy_backends(calls)
        return Backends(b.load_task, b.open_dataset, b.iter_batches, b.load_adapter, b.compute_metrics,
                        lambda m: revision[m])

    setup = EvalSetup(task="toy", data="unused", batch_size=4)
    evaluate([], MODELS, setup, tmp_path / "out", backends=backends())
    calls.clear()
    revision["toy:b"] = "r2"
    evaluate([], MODELS, setup, tmp_path / "out", backends=backends())
    assert calls["loads"] == ["toy:b"]


def test_results_record_the_fingerprints(tmp_path):
    prompt = make_prompt(tmp_path / "p", 0.9)
    res = run(tmp_path, {}, prompts=[prompt])
    fps = res["fingerprints"]
    assert fps["task"] == task_fingerprint(ToySpec())
    assert fps["models"] == {"toy:a": "toy:a", "toy:b": "toy:b"}
    assert fps["prompts"] == {"p": res["prompts"][0]["sha256"]}
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["fingerprints"] == fps
    cell_files = {json.loads(p.read_text())["fingerprint"] for p in (tmp_path / "out" / "cells").glob("*.json")}
    assert {c["fingerprint"] for c in res["cells"]} == cell_files and len(cell_files) == 4


def test_model_fingerprint_follows_local_files_and_refuses_unknown_ids(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    first = model_fingerprint(f"hf:{model}")
    assert model_fingerprint(f"hf:{model}") == first
    (model / "config.json").write_text('{"model_type": "llava", "vocab_size": 7}')
    assert model_fingerprint(f"hf:{model}") != first
    with pytest.raises(UsageError, match="no config.json"):
        model_fingerprint(f"hf:{tmp_path}")
    with pytest.raises(UsageError, match="neither a model directory nor a hub id"):
        model_fingerprint(f"hf:{tmp_path / 'missing' / 'dir'}")
    with pytest.raises(UsageError, match="scheme"):
        model_fingerprint("nope:x")
    assert model_fingerprint("hf:org/some-model") != model_fingerprint("hf:org/other-model")


def test_data_fingerprint_ignores_hidden_files_and_sees_option_paths(tmp_path):
    data, images = tmp_path / "data", tmp_path / "images"
    data.mkdir()
    images.mkdir()
    (data / "q.jsonl").write_text("{}\n")
    base = data_fingerprint(str(data), {"image_dir": str(images)})
    (data / ".DS_Store").write_text("junk")
    assert data_fingerprint(str(data), {"image_dir": str(images)}) == base
    (images / "1.jpg").write_bytes(b"jpeg")
    assert data_fingerprint(str(data), {"image_dir": str(images)}) != base


def test_unknown_model_fails_before_any_output(tmp_path):
    with pytest.raises(UsageError, match="nope:x"):
        run(tmp_path, {}, models=["toy:a", "nope:x"])
    assert not (tmp_path / "out").exists()


def test_unknown_model_with_default_backends_writes_nothing(tmp_path):
    from ._data_fixtures import write_cifar10

    data = write_cifar10(tmp_path / "cifar")
    setup = EvalSetup(task="cifar10", data=str(data), limit=2)
    with pytest.raises(UsageError, match="neither a model directory nor a hub id"):
        evaluate([], [f"hf:{tmp_path / 'no' / 'such'}"], setup, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def class_sorted(n_classes: int = 3, per_class: int = 10) -> list[ToySample]:
    base = toy_dataset(n_classes * per_class)
    ordered = sorted(base, key=lambda s: s.label)  # reader order: class by class, like ImageFolder
    return [ToySample(f"s{i}", s.image, s.label, s.answer) for i, s in enumerate(ordered)]


def test_limit_takes_a_seeded_stratified_subset(tmp_path):
    data = class_sorted()
    calls: dict = {}
    res = run(tmp_path, calls, dataset=data, limit=6, models=["toy:a"])
    assert res["cells"][0]["n"] == 6
    records = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    labels = Counter(r["label"] for r in records)
    assert labels == {0: 2, 1: 2, 2: 2}  # the first 6 would all be class 0
    ids = [r["id"] for r in records]
    again = run(tmp_path / "again", {}, dataset=data, limit=6, models=["toy:a"])
    assert again["cells"] == res["cells"]
    other = run(tmp_path / "seed1", {}, dataset=data, limit=6, models=["toy:a"], seed=1)
    other_ids = [json.loads(x)["id"] for x in (tmp_path / "seed1" / "out" / "samples.jsonl").read_text().splitlines()]
    assert other["cells"][0]["n"] == 6 and other_ids != ids


def test_images_count_by_size_and_mtime_small_annotations_by_hash(tmp_path):
    import os

    (tmp_path / "a.png").write_bytes(b"png bytes")
    (tmp_path / "labels.csv").write_text("a,cat\n")
    base = data_fingerprint(str(tmp_path))
    os.utime(tmp_path / "labels.csv", ns=(1, 1))
    assert data_fingerprint(str(tmp_path)) == base  # same bytes: same annotations
    os.utime(tmp_path / "a.png", ns=(1, 1))
    assert data_fingerprint(str(tmp_path)) != base  # an image is not read, only stat'ed


def test_tsne_features_cover_every_class(tmp_path):
    import numpy as np

    from tvprompt.evaluation.evaluate import _tsne_rows

    data = class_sorted(3, 10)
    run(tmp_path, {}, dataset=data, models=["toy:a"], tsne=True, tsne_samples=6)
    feats = np.load(next((tmp_path / "out" / "features").glob("*.npy")))
    assert feats.shape[0] == 6
    rows = _tsne_rows(data, EvalSetup(task="t", data="d", tsne_samples=6))
    assert sorted(data[r].label for r in rows) == [0, 0, 1, 1, 2, 2]  # the first 6 would all be class 0
