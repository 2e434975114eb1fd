"""Each reader on a tiny fixture written in the dataset's real on-disk format."""

from __future__ import annotations

import importlib.util
import json
import pickle

import numpy as np
import pytest
import torch

from tvprompt.data import detect_format, get_reader, open_dataset
from tvprompt.data.readers.torchvision_fmt import safe_unpickle
from tvprompt.errors import TvpError, UsageError
from tvprompt.tasks import TaskSpec, load_task

from ._data_fixtures import (
    CIFAR10_NAMES,
    write_cifar10,
    write_cifar100,
    write_clevr,
    write_fgvc_aircraft,
    write_food101,
    write_hateful_memes,
    write_imagefolder,
    write_manifest,
    write_oxford_pets,
    write_pope,
    write_svhn,
)


def test_cifar10_pickle_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=10, n_test=20)
    assert detect_format(tmp_path) == "cifar10"
    test = open_dataset("cifar10", tmp_path, "test")
    assert len(test) == 20
    s = test[3]
    assert s.label == 3 and s.answer == CIFAR10_NAMES[3]
    assert s.image.shape == (3, 32, 32) and s.image.dtype == torch.float32
    assert s.image[0, 0, 0].item() == pytest.approx(103 / 255)  # the fixture's marker pixel, CHW order kept
    train = open_dataset("cifar10", tmp_path, "train", val_fraction=0.2)
    val = open_dataset("cifar10", tmp_path, "val", val_fraction=0.2)
    assert len(train) + len(val) == 50 and len(val) == 10  # one per class carved
    assert not {s.id for s in train.samples} & {s.id for s in val.samples}


# A batch as Python 2 pickled it (how the real CIFAR files are): str payloads, numpy.core paths.
PY2_BATCH = (
    b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
    b"\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|"
    b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\xfe\x04\x05tbU\x06labelsq\x07]q\x08"
    b"(K\x00K\x01eu."
)


def test_cifar_python2_pickle(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(PY2_BATCH)
    batch = safe_unpickle(tmp_path / "data_batch_1")
    assert batch["labels"] == [0, 1]
    assert batch["data"].dtype == np.uint8 and batch["data"].tolist() == [[0, 1, 2], [254, 4, 5]]


def test_cifar_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(TvpError, match=r"refusing to load (__)?builtins?(__)?\.print"):
        safe_unpickle(bad)


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    ds = open_dataset("cifar100", tmp_path, "test")
    assert detect_format(tmp_path) == "cifar100"
    assert [s.answer for s in ds.samples[:3]] == ["apple", "aquarium fish", "baby"]
    assert [s.label for s in ds.samples[:3]] == [0, 1, 2]


def test_svhn_mat_zero_is_label_ten(tmp_path):
    write_svhn(tmp_path / "svhn")
    assert detect_format(tmp_path) == "svhn"
    ds = open_dataset("svhn", tmp_path, "test")
    assert [s.answer for s in ds.samples] == [str(i) for i in range(10)]
    assert [s.label for s in ds.samples] == list(range(10))
    assert ds[4].image.shape == (3, 32, 32)
    assert ds[4].image[0, 0, 0].item() == pytest.approx(4 / 255)


def test_imagefolder_single_pool_and_holdout(tmp_path):
    write_imagefolder(tmp_path, ["cat", "dog_breed"], per_class=10)
    assert detect_format(tmp_path) == "imagefolder"
    spec = TaskSpec.from_dict({"version": 1, "name": "pets", "instruction": "This is a photo of a"})
    test = open_dataset(spec, tmp_path, "test")
    train = open_dataset(spec, tmp_path, "train", val_fraction=0.25)
    val = open_dataset(spec, tmp_path, "val", val_fraction=0.25)
    assert len(test) == 10 and len(train) + len(val) == 10  # holdout 0.5 per class
    ids = [{s.id for s in d.samples} for d in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert train.choices == ["cat", "dog breed"]  # from the folders, refined
    assert train.spec.choices == ["cat", "dog breed"] and train.spec.tse_texts() is None
    assert spec.choices is None  # the caller's spec is not modified
    assert spec.choices_for(train[0]) == ["cat", "dog breed"]
    assert test[0].image.shape == (3, 10, 12)


def test_imagenette_wnids_map_to_names(tmp_path):
    write_imagefolder(tmp_path / "imagenette2-320", ["n01440764", "n03888605"], per_class=2, splits=("train", "val"))
    assert detect_format(tmp_path) == "imagenette"
    ds = open_dataset("imagenette", tmp_path, "test")
    assert {s.answer for s in ds.samples} == {"tench", "parachute"}
    assert sorted({s.label for s in ds.samples}) == [0, 9]


def test_oxford_pets(tmp_path):
    write_oxford_pets(tmp_path)
    assert detect_format(tmp_path) == "oxford_pets"
    ds = open_dataset("oxford_pets", tmp_path, "test")
    assert [(s.answer, s.label) for s in ds.samples] == [("american bulldog", 1)]
    assert ds[0].image.shape == (3, 10, 12)


def test_fgvc_aircraft_official_val(tmp_path):
    write_fgvc_aircraft(tmp_path)
    assert detect_format(tmp_path) == "fgvc_aircraft"
    spec = load_task("fgvc_aircraft")
    val = open_dataset(spec, tmp_path, "val")
    train = open_dataset(spec, tmp_path, "train")
    assert [s.answer for s in val.samples] == ["A300B4"] and val.samples[0].label == spec.choices.index("A300B4")
    assert {s.answer for s in train.samples} == {"707-320", "BAE 146-200"}


def test_food101(tmp_path):
    write_food101(tmp_path)
    assert detect_format(tmp_path) == "food101"
    ds = open_dataset("food101", tmp_path, "test")
    assert [(s.answer, s.label) for s in ds.samples] == [("baby back ribs", 1)]


@pytest.mark.parametrize("with_scenes", [True, False])
def test_clevr_counts(tmp_path, with_scenes):
    write_clevr(tmp_path, {"train": [3, 4, 5, 3, 4, 5, 3, 4, 5, 6], "val": [3, 7, 10]}, with_scenes=with_scenes)
    assert detect_format(tmp_path) == "clevr"
    spec = load_task("clevr_count")
    ds = open_dataset(spec, tmp_path, "test")
    assert [s.answer for s in ds.samples] == ["3", "7", "10"]
    assert [spec.label_index(s) for s in ds.samples] == [3, 7, 10]
    if with_scenes:
        assert ds.samples[0].question is None
    else:  # counting questions only; the yes/no question was dropped
        assert len(ds) == 3 and ds.samples[0].question == "How many cubes are there?"
    assert spec.prompt_for(ds.samples[0]).startswith("How many objects are there in this image?")


def test_hateful_memes(tmp_path):
    write_hateful_memes(tmp_path)
    assert detect_format(tmp_path) == "hateful_memes"
    spec = load_task("hateful_memes")
    ds = open_dataset(spec, tmp_path, "test")  # test_seen absent -> dev_seen
    assert [(s.answer, s.text) for s in ds.samples] == [("yes", "rude"), ("no", "kind")]
    assert spec.prompt_for(ds.samples[0]) == 'This is an image with: "rude" written on it. Is it hateful?'
    assert spec.label_index(ds.samples[0]) == 0
    assert spec.tse_text_for(ds.samples[0]) == 'a hateful meme with "rude" written on it.'
    assert spec.tse_text_for(ds.samples[1]) == 'a harmless meme with "kind" written on it.'


def test_hateful_memes_unlabelled_split_is_an_error(tmp_path):
    write_hateful_memes(tmp_path)
    (tmp_path / "test_seen.jsonl").write_text(json.dumps({"id": 9, "img": "img/00001.png", "text": "x"}) + "\n")
    with pytest.raises(TvpError, match=r"test_seen.jsonl:1: label must be 0 or 1"):
        open_dataset("hateful_memes", tmp_path, "test")


def test_pope(tmp_path):
    write_pope(tmp_path, "popular", n=8)
    assert detect_format(tmp_path) == "pope"
    spec = load_task("pope_popular")
    test = open_dataset(spec, tmp_path, "test")
    train = open_dataset(spec, tmp_path, "train", val_fraction=0.25)
    assert len(test) == 4 and len(train) == 3  # holdout half of 8, then 1 of 4 to val
    assert {s.answer for s in test.samples} == {"yes", "no"}
    s = test.samples[0]
    assert spec.prompt_for(s) == s.question and s.question.startswith("Is there a thing")
    assert spec.choices_for(s) == ["yes", "no"]
    # the test half never depends on the run seed
    assert [x.id for x in open_dataset(spec, tmp_path, "test", seed=5).samples] == [x.id for x in test.samples]
    with pytest.raises(TvpError, match="coco_pope_random"):
        open_dataset("pope_random", tmp_path, "test")


def test_manifest_with_splits_and_choices(tmp_path):
    rows = [
        {"image": "a/1.png", "answer": "red", "split": "train"},
        {"image": "a/2.png", "answer": "blue", "split": "train", "extra": 7},
        {"image": "a/3.png", "answer": "red", "split": "test", "question": "What color?", "choices": ["blue", "red"]},
    ]
    path = write_manifest(tmp_path, rows)
    assert detect_format(path) == "manifest" and detect_format(tmp_path) == "manifest"
    spec = TaskSpec.from_dict({"version": 1, "name": "colors", "instruction": "{question}"})
    test = open_dataset(spec, path, "test")
    s = test[0]
    assert (s.answer, s.label, s.choices, s.question) == ("red", 1, ["blue", "red"], "What color?")
    val = open_dataset(spec, path, "val", val_fraction=0.5)
    assert len(val) == 1
    train_all = open_dataset(spec, path, "train", val_fraction=0.5)
    assert len(train_all) == 1 and train_all.samples[0].meta.get("extra", 7) == 7


def test_manifest_malformed_line_names_file_and_line(tmp_path):
    path = write_manifest(tmp_path, [{"image": "x.png", "answer": "a"}])
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(TvpError, match=r"manifest.jsonl:2: not valid JSON"):
        open_dataset("cifar10", path, "test")


def test_manifest_missing_image_names_it(tmp_path):
    path = write_manifest(tmp_path, [{"image": "x.png", "answer": "cat"}])
    path.write_text(path.read_text() + json.dumps({"image": "gone/y.png", "answer": "dog"}) + "\n")
    with pytest.raises(TvpError, match=r"manifest.jsonl:2: image gone/y.png not found"):
        open_dataset("cifar10", path, "test")


def test_manifest_missing_field(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "x.png"}) + "\n")
    with pytest.raises(TvpError, match=r"m.jsonl:1: field 'answer' is missing"):
        open_dataset("cifar10", path, "test")


def test_answer_outside_choices_is_a_clear_error(tmp_path):
    path = write_manifest(tmp_path, [{"image": "x.png", "answer": "spaceship"}])
    with pytest.raises(TvpError, match=r"'spaceship' not among task cifar10's 10 choices"):
        open_dataset("cifar10", path, "test")


def test_hf_disk_without_datasets_says_what_to_install(tmp_path):
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert detect_format(tmp_path) == "hf_disk"
    with pytest.raises(UsageError, match=r"pip install 'tvprompt\[hf\]'"):
        open_dataset("cifar10", tmp_path, "test")


def test_download_without_torchvision_is_a_usage_error(tmp_path):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed")
    with pytest.raises(UsageError, match="pip install torchvision"):
        open_dataset("cifar10", tmp_path, "test", download=True)


def test_unknown_layout_and_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TvpError, match="cannot tell the dataset layout"):
        open_dataset(TaskSpec.from_dict({"version": 1, "name": "t"}), tmp_path, "test")
    with pytest.raises(UsageError, match="unknown dataset format"):
        get_reader("nope")
    with pytest.raises(TvpError, match="no such file"):
        open_dataset("cifar10", tmp_path / "missing", "test")


def test_forced_format_overrides_detection(tmp_path):
    write_imagefolder(tmp_path, ["cat", "dog"], per_class=2)
    ds = open_dataset("cifar10", tmp_path, "test", format="imagefolder")
    assert {s.answer for s in ds.samples} <= {"cat", "dog"}
    assert np.all([s.label in (3, 5) for s in ds.samples])


class _FakeClassLabel:
    def __init__(self, names):
        self.names = names


class _FakeHFDataset:
    """The slice of `datasets.Dataset` the reader uses (datasets itself is an optional dependency)."""

    def __init__(self, rows, features):
        self.rows, self.features = rows, features
        self.column_names = list(rows[0])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    def remove_columns(self, cols):
        return _FakeHFDataset([{k: v for k, v in r.items() if k not in cols} for r in self.rows], self.features)


def test_hf_disk_reader_with_a_datasets_stand_in(tmp_path, monkeypatch):
    import sys
    import types

    from PIL import Image

    rows = [{"image": Image.new("RGB", (6, 4), (i * 40, 0, 0)), "label": i % 2} for i in range(6)]
    splits = {"train": _FakeHFDataset(rows, {"label": _FakeClassLabel(["cat", "dog"])}),
              "test": _FakeHFDataset(rows[:2], {"label": _FakeClassLabel(["cat", "dog"])})}  # fmt: skip
    fake = types.ModuleType("datasets")
    fake.load_from_disk = lambda p: splits if p == str(tmp_path) else None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    ds = open_dataset("cifar10", tmp_path, "test")
    assert [(s.answer, s.label) for s in ds.samples] == [("cat", 3), ("dog", 5)]
    img = ds[1].image
    assert img.shape == (3, 4, 6) and img[0, 0, 0].item() == pytest.approx(40 / 255)
    assert len(open_dataset("cifar10", tmp_path, "train", val_fraction=0.34)) == 4
    for r in rows:
        r["category"] = "random" if r["label"] else "popular"
    splits["test"] = _FakeHFDataset(rows, splits["test"].features)
    only = open_dataset("cifar10", tmp_path, "test", format_options={"where": {"category": "random"}})
    assert [s.answer for s in only.samples] == ["dog"] * 3
    with pytest.raises(TvpError, match="format_options.where"):
        open_dataset("cifar10", tmp_path, "test", format_options={"where": {"nope": 1}})


def test_registered_reader_is_detected_and_used(tmp_path):
    from tvprompt.data import RawSplit, Reader, Sample, register_reader
    from tvprompt.data.readers import _READERS

    class CsvReader(Reader):
        name = "test_csv_index"
        priority = 5

        def detect(self, path):
            return (path / "index.csv").exists()

        def splits(self, path, options):
            return ["all"]

        def read(self, path, split, options):
            rows = [line.split(",") for line in (path / "index.csv").read_text().split()]
            return RawSplit([Sample(id=f, image=torch.full((3, 4, 4), 0.5), answer=a) for f, a in rows])

    register_reader(CsvReader)
    try:
        (tmp_path / "index.csv").write_text("a,cat\nb,dog\nc,cat\nd,dog\n")
        assert detect_format(tmp_path) == "test_csv_index"
        ds = open_dataset("cifar10", tmp_path, "test")
        assert len(ds) == 2 and {s.answer for s in ds.samples} == {"cat", "dog"}
        assert ds[0].image.shape == (3, 4, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_reader(CsvReader)
    finally:
        _READERS.pop("test_csv_index", None)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_load(tmp_path, protocol):
    import pickle

    from tvprompt.data.readers.torchvision_fmt import safe_unpickle

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    (tmp_path / "batch").write_bytes(pickle.dumps({b"labels": [1, 2], b"data": data}, protocol=protocol))
    loaded = safe_unpickle(tmp_path / "batch")
    assert loaded["labels"] == [1, 2] and np.array_equal(loaded["data"], data)
    (tmp_path / "evil").write_bytes(pickle.dumps({"x": print}, protocol=protocol))
    with pytest.raises(TvpError, match=r"refusing to load (__builtin__|builtins)\.print"):
        safe_unpickle(tmp_path / "evil")


def _fake_hf(monkeypatch, tmp_path, splits):
    import sys
    import types

    fake = types.ModuleType("datasets")
    fake.load_from_disk = lambda p: splits
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": sorted(splits)}))


def test_hf_disk_label_and_answer_columns(tmp_path, monkeypatch):
    from PIL import Image

    img = Image.new("RGB", (4, 4))
    rows = [{"img": img, "fine_label": i % 3, "coarse_label": 0} for i in range(6)]
    features = {"fine_label": _FakeClassLabel(["apple", "aquarium_fish", "baby"]),
                "coarse_label": _FakeClassLabel(["x"])}
    _fake_hf(monkeypatch, tmp_path, {"train": _FakeHFDataset(rows, features), "test": _FakeHFDataset(rows, features)})
    spec = TaskSpec.from_dict({"version": 1, "name": "c100", "format_options": {"label_column": "fine_label"}})
    ds = open_dataset(spec, tmp_path, "test")
    assert [s.answer for s in ds.samples[:3]] == ["apple", "aquarium fish", "baby"] and ds.samples[1].label == 1
    with pytest.raises(TvpError, match=r"needs a ClassLabel column 'label' or a text column 'answer'.*label_column"):
        open_dataset(TaskSpec.from_dict({"version": 1, "name": "c100"}), tmp_path, "test")
    with pytest.raises(TvpError, match=r"format_options.label_column 'fine' is not a column \(columns: coarse_label"):
        open_dataset(spec, tmp_path, "test", format_options={"label_column": "fine"})

    memes = [{"img": img, "label": i % 2, "text": "t", "caption": ["no", "yes"][i % 2]} for i in range(8)]
    _fake_hf(monkeypatch, tmp_path, {"train": _FakeHFDataset(memes, {}), "test_seen": _FakeHFDataset(memes, {})})
    ds = open_dataset("hateful_memes", tmp_path, "test", format_options={"label_names": ["no", "yes"]})
    assert [s.answer for s in ds.samples[:2]] == ["no", "yes"]
    assert [ds.spec.label_index(s) for s in ds.samples[:2]] == [1, 0]  # the task's choices are [yes, no]
    ds = open_dataset("hateful_memes", tmp_path, "test", format_options={"answer_column": "caption"})
    assert [s.answer for s in ds.samples[:2]] == ["no", "yes"]


def test_the_datas_own_val_split_is_used(tmp_path, monkeypatch):
    from PIL import Image

    img = Image.new("RGB", (4, 4))
    make = lambda n, tag: _FakeHFDataset([{"image": img, "label": i % 2, "id": f"{tag}{i}"} for i in range(n)],  # noqa: E731
                                         {"label": _FakeClassLabel(["cat", "dog"])})
    _fake_hf(monkeypatch, tmp_path, {"train": make(10, "tr"), "validation": make(4, "va"), "test": make(4, "te")})
    val = open_dataset("cifar10", tmp_path, "val")
    assert [s.id for s in val.samples] == ["va0", "va1", "va2", "va3"]
    assert len(open_dataset("cifar10", tmp_path, "train")) == 10  # nothing carved from train


def test_imagefolder_val_folder_is_used_but_never_the_test_split(tmp_path):
    root = write_imagefolder(tmp_path / "f", ["cat", "dog"], per_class=3, splits=("train", "val", "test"))
    spec = TaskSpec.from_dict({"version": 1, "name": "t", "format": "imagefolder"})
    assert all(s.id.startswith("val/") for s in open_dataset(spec, root, "val").samples)
    assert len(open_dataset(spec, root, "train")) == 6
    nette = TaskSpec.from_dict({"version": 1, "name": "n", "format": "imagefolder",
                                "splits": {"train": "train", "val": None, "test": "val"}})
    val = open_dataset(nette, root, "val", val_fraction=0.34)  # val/ is the test set here: carve from train
    assert all(s.id.startswith("train/") for s in val.samples)


def test_datasets_is_a_declared_extra():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(req.startswith("datasets") for req in project["optional-dependencies"]["hf"])


@pytest.mark.parametrize("seed", [0, 1, 7, 13])
def test_holdout_is_the_same_and_disjoint_from_train_at_every_seed(tmp_path, seed):
    write_imagefolder(tmp_path, ["cat", "dog", "eel"], per_class=9)
    spec = TaskSpec.from_dict({"version": 1, "name": "pets"})
    test = {s.id for s in open_dataset(spec, tmp_path, "test", seed=seed).samples}
    assert test == {s.id for s in open_dataset(spec, tmp_path, "test", seed=0).samples}  # never moves with the seed
    train = {s.id for s in open_dataset(spec, tmp_path, "train", seed=seed, val_fraction=0.2).samples}
    val = {s.id for s in open_dataset(spec, tmp_path, "val", seed=seed, val_fraction=0.2).samples}
    assert not (train & test) and not (val & test) and not (train & val)
    assert len(train | val | test) == 27
