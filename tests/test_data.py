"""Splits, stratified subsampling, on-the-fly corruption and batching."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from tvprompt.data import Sample, iter_batches, open_dataset
from tvprompt.data.batching import batch_order
from tvprompt.data.splits import stratified_pick, subsample
from tvprompt.errors import TvpError, UsageError
from tvprompt.evaluation.metrics import compute_metrics
from tvprompt.tasks import TaskSpec

from ._data_fixtures import color_image, write_cifar10, write_manifest


def _keys(sizes: dict[str, int]) -> list[str]:
    return [k for k, n in sizes.items() for _ in range(n)]


def test_stratified_pick_proportions_and_seed():
    keys = _keys({"a": 100, "b": 50, "c": 10})
    picked = stratified_pick(keys, 0.1, seed=0, salt=3)
    assert Counter(keys[i] for i in picked) == {"a": 10, "b": 5, "c": 1}
    assert picked == sorted(picked) == stratified_pick(keys, 0.1, seed=0, salt=3)
    assert picked != stratified_pick(keys, 0.1, seed=1, salt=3)
    assert Counter(keys[i] for i in stratified_pick(keys, 0.5, 0, 3)) == {"a": 50, "b": 25, "c": 5}
    # small splits keep the overall share: 2 + 2 at 25 % -> 1 in total, not 1 per class
    assert len(stratified_pick(_keys({"y": 2, "n": 2}), 0.25, 0, 3)) == 1
    # carving never empties a class; subsampling keeps at least one per class
    tiny = _keys({"a": 2, "b": 1})
    assert Counter(tiny[i] for i in stratified_pick(tiny, 0.9, 0, 3, keep_one=True)) == {"a": 1, "b": 1}
    assert Counter(keys[i] for i in stratified_pick(keys, 0.01, 0, 3, min_per_class=1)) == {"a": 1, "b": 1, "c": 1}


def test_subsample_keeps_every_class():
    samples = [Sample(id=str(i), image=None, answer=k, label=ord(k)) for i, k in enumerate(_keys({"a": 300, "b": 20}))]
    small = subsample(samples, 0.01, seed=0)
    assert Counter(s.answer for s in small) == {"a": 3, "b": 1}
    assert subsample(samples, 1.0, seed=0) is samples


@pytest.fixture
def manifest(tmp_path):
    """200 train rows (red 150 / blue 50) and 20 test rows, sharing two image files."""
    color_image(tmp_path / "r.png", 200, size=(16, 8))
    color_image(tmp_path / "b.png", 10, size=(16, 8))
    rows = [{"image": "r.png", "answer": "red", "split": "train", "id": f"r{i}"} for i in range(150)]
    rows += [{"image": "b.png", "answer": "blue", "split": "train", "id": f"b{i}"} for i in range(50)]
    rows += [{"image": "r.png" if i % 2 else "b.png", "answer": "red" if i % 2 else "blue", "split": "test",
              "id": f"t{i}"} for i in range(20)]  # fmt: skip
    return write_manifest(tmp_path, rows)


SPEC = TaskSpec.from_dict({"version": 1, "name": "colors", "instruction": "Color?", "choices": ["red", "blue"],
                           "tse_text": "a {answer} picture"})  # fmt: skip


def test_open_dataset_val_carving_and_fraction(manifest):
    train = open_dataset(SPEC, manifest, "train", seed=0, val_fraction=0.1)
    val = open_dataset(SPEC, manifest, "val", seed=0, val_fraction=0.1)
    assert Counter(s.answer for s in val.samples) == {"red": 15, "blue": 5}
    assert len(train) == 180 and not {s.id for s in train.samples} & {s.id for s in val.samples}
    assert [s.id for s in open_dataset(SPEC, manifest, "val", seed=0).samples] == [s.id for s in val.samples]
    assert [s.id for s in open_dataset(SPEC, manifest, "val", seed=1).samples] != [s.id for s in val.samples]
    small = open_dataset(SPEC, manifest, "train", seed=0, fraction=0.1)
    counts = Counter(s.answer for s in small.samples)  # 13.5 + 4.5 -> 18 by largest remainder
    assert sum(counts.values()) == 18 and counts["red"] in (13, 14) and counts["blue"] in (4, 5)
    assert [s.label for s in small.samples[:1]] == [0]
    with pytest.raises(UsageError, match="fraction"):
        open_dataset(SPEC, manifest, "train", fraction=0.001)
    with pytest.raises(UsageError, match="split must be"):
        open_dataset(SPEC, manifest, "dev")


def test_corruption_on_the_fly_is_deterministic(manifest):
    clean = open_dataset(SPEC, manifest, "test")
    a = open_dataset(SPEC, manifest, "test", corruption="gaussian_noise", severity=3, seed=0)
    b = open_dataset(SPEC, manifest, "test", corruption="gaussian_noise", severity=3, seed=0)
    c = open_dataset(SPEC, manifest, "test", corruption="gaussian_noise", severity=3, seed=1)
    assert torch.equal(a[0].image, b[0].image)
    assert not torch.equal(a[0].image, c[0].image)
    assert (a[0].image - clean[0].image).abs().mean() > 0.01
    assert a[0].image.min() >= 0 and a[0].image.max() <= 1
    with pytest.raises(UsageError, match="unknown corruption"):
        open_dataset(SPEC, manifest, "test", corruption="rain", severity=1)
    with pytest.raises(UsageError, match="severity"):
        open_dataset(SPEC, manifest, "test", corruption="fog", severity=6)


def test_the_corruption_strength_picks_the_table(manifest):
    from tvprompt.data.corruptions import corrupt

    clean = open_dataset(SPEC, manifest, "test")[0].image
    cifar = open_dataset(SPEC, manifest, "test", corruption="brightness", severity=3)[0].image
    inet = open_dataset(SPEC, manifest, "test", corruption="brightness", severity=3, corruption_strength="imagenetc")
    assert torch.allclose(cifar, corrupt(clean, "brightness", 3, strength="cifar10c"))
    assert torch.allclose(inet[0].image, corrupt(clean, "brightness", 3, strength="imagenetc"))
    assert not torch.allclose(inet[0].image, cifar, atol=1e-3)
    with pytest.raises(UsageError, match="corruption strength"):
        open_dataset(SPEC, manifest, "test", corruption="fog", severity=1, corruption_strength="imagenet")


def test_iter_batches_shapes_order_and_resume(manifest):
    ds = open_dataset(SPEC, manifest, "train", seed=0)
    full = list(iter_batches(ds, 32, shuffle=True, seed=7, image_size=24))
    assert [b.index for b in full] == list(range(6))
    assert full[0].images.shape == (32, 3, 24, 24) and full[-1].images.shape == (180 - 5 * 32, 3, 24, 24)
    assert full[0].images.dtype == torch.float32 and full[0].images.min() >= 0 and full[0].images.max() <= 1
    assert full[0].samples[0].image.data_ptr() == full[0].images[0].data_ptr()
    again = list(iter_batches(ds, 32, shuffle=True, seed=7, image_size=24))
    assert [s.id for b in again for s in b.samples] == [s.id for b in full for s in b.samples]
    other_epoch = [s.id for b in iter_batches(ds, 32, shuffle=True, seed=7, epoch=1, image_size=24) for s in b.samples]
    assert other_epoch != [s.id for b in full for s in b.samples]
    assert sorted(other_epoch) == sorted(s.id for s in ds.samples)
    resumed = list(iter_batches(ds, 32, shuffle=True, seed=7, image_size=24, start=4))
    assert [b.index for b in resumed] == [4, 5]
    assert [s.id for s in resumed[0].samples] == [s.id for s in full[4].samples]
    assert torch.equal(resumed[1].images, full[5].images)
    dropped = list(iter_batches(ds, 32, drop_last=True, image_size=24))
    assert len(dropped) == 5 and [s.id for s in dropped[0].samples] == [s.id for s in ds.samples[:32]]


def test_iter_batches_with_workers_matches_inline(manifest):
    ds = open_dataset(SPEC, manifest, "test")
    inline = list(iter_batches(ds, 8, shuffle=True, seed=1, image_size=16))
    workers = list(iter_batches(ds, 8, shuffle=True, seed=1, image_size=16, num_workers=2))
    assert [b.index for b in workers] == [0, 1, 2]
    for x, y in zip(inline, workers, strict=True):
        assert [s.id for s in x.samples] == [s.id for s in y.samples]
        assert torch.equal(x.images, y.images)


def test_default_workers_decode_in_parallel_only_for_a_gpu(monkeypatch):
    import os

    from tvprompt.data import default_workers

    assert default_workers("cpu") == 0  # workers would compete with the model for the cores
    assert default_workers("cuda:1") == max(0, min(4, (os.cpu_count() or 1) - 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_workers() == default_workers("cuda")


def test_resize_is_antialiased_bilinear(manifest):
    ds = open_dataset(SPEC, manifest, "test")
    b = next(iter_batches(ds, 1, image_size=4))
    ref = torch.nn.functional.interpolate(ds[0].image[None], size=(4, 4), mode="bilinear", antialias=True)
    assert torch.allclose(b.images, ref.clamp(0, 1))


def test_corrupt_samples_skipped_and_counted(tmp_path, caplog):
    color_image(tmp_path / "ok.png", 1)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    rows = [{"image": "ok.png", "answer": "red"}, {"image": "bad.png", "answer": "red", "id": "broken"},
            {"image": "ok.png", "answer": "blue"}]  # fmt: skip
    path = write_manifest(tmp_path, rows)
    spec = TaskSpec.from_dict({"version": 1, "name": "c", "choices": ["red", "blue"]})
    from tvprompt.data import TaskDataset
    from tvprompt.data.readers import get_reader

    # every row of the pool, in file order (open_dataset would hold half of it out as test)
    full = TaskDataset(spec, get_reader("manifest").read(path, "all", {}).samples, split="test", source=str(path))
    with caplog.at_level(logging.WARNING, logger="tvprompt.data.batching"):
        batches = list(iter_batches(full, 3, image_size=8))
    assert len(batches) == 1 and len(batches[0]) == 2 and batches[0].images.shape[0] == 2
    assert batches[0].skipped and batches[0].skipped[0][0] == "broken"
    assert "skipped unreadable sample broken" in caplog.text and "skipped 1 unreadable sample(s) of 3" in caplog.text
    only_bad = TaskDataset(spec, [full.samples[1]], split="test", source=str(path))
    with pytest.raises(TvpError, match="no readable sample"):
        list(iter_batches(only_bad, 2))


def test_empty_dataset_is_an_error():
    from tvprompt.data import TaskDataset

    with pytest.raises(TvpError, match="empty"):
        list(iter_batches(TaskDataset(SPEC, [], split="test", source="x"), 4))


def test_batch_order_is_a_pure_function():
    assert batch_order(5, 2, shuffle=False, seed=0, epoch=0, drop_last=False) == [[0, 1], [2, 3], [4]]
    a = batch_order(100, 10, shuffle=True, seed=3, epoch=2, drop_last=False)
    assert a == batch_order(100, 10, shuffle=True, seed=3, epoch=2, drop_last=False)
    assert sorted(i for b in a for i in b) == list(range(100))


def test_custom_yaml_over_manifest_end_to_end(tmp_path):
    """A user's YAML task over a JSONL manifest goes through the same path as a built-in."""
    for i in range(12):
        color_image(tmp_path / "imgs" / f"{i}.png", 20 * i)
    rows = [{"image": f"imgs/{i}.png", "answer": ["circle", "square", "triangle"][i % 3],
             "split": "test" if i >= 9 else "train"} for i in range(12)]  # fmt: skip
    manifest = write_manifest(tmp_path, rows)
    (tmp_path / "shapes.yaml").write_text(
        "version: 1\nname: shapes\nkind: classification\ninstruction: 'Which shape is this?'\n"
        "choices: [circle, square, triangle]\ntse_text: 'a photo of a {answer}.'\nmetrics: [top1]\n"
    )
    from tvprompt.tasks import load_task

    spec = load_task(tmp_path / "shapes.yaml")
    train = open_dataset(spec, manifest, "train", val_fraction=0.34)
    test = open_dataset(spec, manifest, "test")
    assert len(train) == 6 and len(test) == 3
    batch = next(iter_batches(train, 4, shuffle=True, seed=0, image_size=32))
    prompts = [spec.prompt_for(s) for s in batch.samples]
    answers = [spec.answer_for(s) for s in batch.samples]
    assert prompts == ["Which shape is this?"] * 4 and set(answers) <= {"circle", "square", "triangle"}
    assert [spec.tse_text_for(s) for s in batch.samples] == [f"a photo of a {a}." for a in answers]
    records = []
    for b in iter_batches(test, 2, image_size=32):
        for s in b.samples:
            label = spec.label_index(s)
            scores = [0.0, 0.0, 0.0]
            scores[label] = 1.0
            records.append({"id": s.id, "label": label, "pred": label, "scores": scores})
    assert compute_metrics(spec, records) == {"n": 3.0, "top1": 1.0}


def test_cifar_fixture_batches(tmp_path):
    write_cifar10(tmp_path)
    ds = open_dataset("cifar10", tmp_path, "test")
    b = next(iter_batches(ds, 5, image_size=224))
    assert b.images.shape == (5, 3, 224, 224)
    assert [s.label for s in b.samples] == [0, 1, 2, 3, 4]


def test_iter_batches_shards_the_global_batch(manifest):
    ds = open_dataset(SPEC, manifest, "test")
    whole = [[s.id for s in b.samples] for b in iter_batches(ds, 8, shuffle=True, seed=3, image_size=8)]
    parts = [[[s.id for s in b.samples] for b in iter_batches(ds, 8, shuffle=True, seed=3, image_size=8, rank=r,
                                                              world_size=2)] for r in (0, 1)]  # fmt: skip
    for k, ids in enumerate(whole):
        assert parts[0][k] == ids[0::2] and parts[1][k] == ids[1::2]
    with pytest.raises(UsageError, match="rank"):
        next(iter_batches(ds, 8, rank=2, world_size=2))
