"""Task/data mismatches fail with one line; junk folders never become classes."""

from __future__ import annotations

import pytest

from tvprompt.data import open_dataset
from tvprompt.data import shapeworld as sw
from tvprompt.errors import TvpError
from tvprompt.tasks import TaskSpec, load_task

from ._data_fixtures import color_image, write_imagefolder, write_pope


def test_task_choices_are_not_overridden_by_per_sample_choices(tmp_path):
    data = sw.write_dataset("count", 12, tmp_path / "sw")
    with pytest.raises(TvpError, match="not among task cifar10's 10 choices") as err:
        open_dataset(load_task("cifar10"), data, "test")
    assert "\n" not in str(err.value)
    assert len(open_dataset(load_task("shapeworld_count"), data, "test")) > 0  # the right task still opens


def test_pope_subset_mismatch_is_refused(tmp_path):
    root = write_pope(tmp_path / "pope", subset="adversarial")
    file = root / "coco_pope_adversarial.json"
    with pytest.raises(TvpError,
                       match="POPE adversarial subset but the task asks for random; use --task pope_adversarial"):
        open_dataset(load_task("pope_random"), file, "test")
    assert len(open_dataset(load_task("pope_adversarial"), file, "test")) > 0
    with pytest.raises(TvpError, match="no coco_pope_random.json"):
        open_dataset(load_task("pope_random"), root, "test")


def test_imagefolder_ignores_macosx_and_hidden_folders(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", ["cat", "dog"], per_class=3)
    for junk in ("__MACOSX/cat", ".thumbnails", "cat/.cache"):
        color_image(root / junk / "x.png", 5)
    color_image(root / "dog" / "._a.png", 5)  # an AppleDouble file beside real ones
    spec = TaskSpec(name="two", version=1, format="imagefolder")
    for split in ("train", "val"):
        ds = open_dataset(spec, root, split, val_fraction=0.34)
        assert ds.choices == ["cat", "dog"]
        assert all("MACOSX" not in str(s.image) and "/." not in str(s.image) for s in ds.samples)
    total = sum(len(open_dataset(spec, root, s, val_fraction=0.34)) for s in ("train", "val", "test"))
    assert total == 6
