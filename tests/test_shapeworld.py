"""ShapeWorld: determinism, labels checked from the pixels, the downstream shift, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tvprompt.data import shapeworld as sw
from tvprompt.errors import UsageError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _components(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions that differ from the (uniform) pretrain background colour."""
    bg = image[0, 0]
    fg = np.any(image != bg, axis=-1)
    return ndimage.label(fg, structure=np.ones((3, 3)))


def _best_shape(region: np.ndarray) -> str:
    """The shape whose canonical mask, fitted to the region's extent, overlaps it best (IoU)."""
    ys, xs = np.nonzero(region)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    best, best_iou = None, -1.0
    for shape in sw.SHAPES:
        # the square is drawn at 0.85 of its box; undo that when fitting it to the extent
        s = size / 0.85 if shape == "square" else size
        cy_fit = ys.min() + s / 2 if shape == "triangle" else cy
        m = sw.object_mask(sw.SceneObject(shape, "red", round(cx), round(cy_fit), round(s)), region.shape[0])
        iou = (m & region).sum() / (m | region).sum()
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def test_samples_are_pure_functions_of_their_arguments():
    a = sw.generate_sample("count", 17, distribution="downstream", seed=3)
    b = sw.generate_sample("count", 17, distribution="downstream", seed=3)
    assert np.array_equal(a.image, b.image) and a.answer == b.answer and a.objects == b.objects
    # order-independent: the same index drawn inside a batch is identical
    batch = list(sw.iter_samples("count", 5, distribution="downstream", seed=3, start=15))
    assert np.array_equal(batch[2].image, a.image)
    c = sw.generate_sample("count", 17, distribution="downstream", seed=4)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (224, 224, 3) and a.image.dtype == np.uint8


@pytest.mark.parametrize("index", range(12))
def test_count_labels_match_connected_components(index):
    s = sw.generate_sample("count", index, distribution="pretrain", seed=1)
    _, n = _components(s.image)
    assert str(n) == s.answer
    assert 1 <= int(s.answer) <= sw.MAX_COUNT


@pytest.mark.parametrize("index", range(16))
def test_shape_and_color_labels_match_pixels(index):
    s = sw.generate_sample("shape", index, distribution="pretrain", seed=2)
    labels, n = _components(s.image)
    assert n == 1
    region = labels == 1
    assert _best_shape(region) == s.answer
    c = sw.generate_sample("color", index, distribution="pretrain", seed=2)
    labels, _ = _components(c.image)
    pixels = c.image[labels == 1]
    assert np.all(pixels == np.asarray(sw.COLORS[c.answer], np.uint8))


def test_every_shape_is_recognised_from_its_pixels():
    for shape in sw.SHAPES:
        for size in (50, 120):
            m = sw.object_mask(sw.SceneObject(shape, "red", 112, 112, size))
            assert ndimage.label(m, structure=np.ones((3, 3)))[1] == 1, shape  # one connected object
            assert _best_shape(m) == shape


def test_exist_answers_match_pixels_and_negatives_are_adversarial():
    answers, adversarial = [], 0
    for i in range(40):
        s = sw.generate_sample("exist", i, distribution="pretrain", seed=0)
        asked = s.question.split("Is there a ")[1].split(" shape in the image")[0]
        labels, n = _components(s.image)
        present = {next(c for c, rgb in sw.COLORS.items() if np.all(s.image[labels == k][0] == rgb))
                   for k in range(1, n + 1)}
        assert (asked in present) == (s.answer == "yes"), (i, asked, present)
        answers.append(s.answer)
        if s.answer == "no":
            adversarial += any(sw.CONFUSABLE[p] == asked for p in present)
    assert 12 <= answers.count("yes") <= 28  # balanced
    assert adversarial >= answers.count("no") * 0.8


def test_downstream_is_a_shift():
    pre = np.stack([sw.generate_sample("shape", i, distribution="pretrain").image for i in range(20)])
    down = np.stack([sw.generate_sample("shape", i, distribution="downstream").image for i in range(20)])
    # textured backgrounds: far more variation in a corner patch; smaller objects
    assert down[:, :16, :16].std(axis=(1, 2, 3)).mean() > 4 * pre[:, :16, :16].std(axis=(1, 2, 3)).mean()
    pre_sizes = [sw.generate_sample("shape", i).objects[0].size for i in range(50)]
    down_sizes = [sw.generate_sample("shape", i, distribution="downstream").objects[0].size for i in range(50)]
    assert np.mean(down_sizes) < 0.8 * np.mean(pre_sizes)


def test_bad_arguments_raise_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown ShapeWorld task"):
        sw.generate_sample("nope", 0)
    with pytest.raises(UsageError, match="distribution"):
        sw.generate_sample("shape", 0, distribution="x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        sw.write_dataset("shape", 2, tmp_path / "full")


def test_cli_writes_pngs_and_manifest(tmp_path):
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "tvprompt", "shapeworld", "--task", "exist", "--n", "10", "--output", str(out),
           "--split-mix", "--distribution", "pretrain", "--seed", "5"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == 10
    for i, rec in enumerate(recs):
        assert rec["answer"] in rec["choices"] == ["yes", "no"]
        assert rec["split"] in ("train", "val", "test")
        s = sw.generate_sample("exist", i, distribution="pretrain", seed=5)
        assert rec["question"] == s.question and rec["answer"] == s.answer
        assert np.array_equal(np.asarray(Image.open(out / rec["image"])), s.image)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not empty" in r.stderr


@pytest.mark.parametrize("task", sw.TASKS)
def test_builtin_task_specs_read_generated_datasets(task, tmp_path):
    from tvprompt.data import open_dataset
    from tvprompt.tasks import load_task

    spec = load_task(f"shapeworld_{task}")
    assert spec.choices == sw.CHOICES[task]
    sw.write_dataset(task, 30, tmp_path / "mixed", distribution="downstream", seed=1, split_mix=True)
    sizes = {}
    for split in ("train", "val", "test"):
        ds = open_dataset(spec, tmp_path / "mixed", split)
        sizes[split] = len(ds)
        s = ds[0]
        assert spec.answer_for(s) == s.answer and spec.prompt_for(s) == s.question
        assert spec.choices_for(s)[spec.label_index(s)] == s.answer
    assert sum(sizes.values()) == 30
    sw.write_dataset(task, 12, tmp_path / "pool", seed=1)  # no split tags: one pool, held out by the reader
    assert len(open_dataset(spec, tmp_path / "pool", "test")) > 0
