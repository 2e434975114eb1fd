"""Tiny datasets written in their real on-disk formats (shared by the data tests)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def color_image(path: Path, value: int, size: tuple[int, int] = (12, 10), fmt: str | None = None) -> Path:
    """A solid image whose red channel is ``value`` (so tests can tell images apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, 40, 200)).save(path, format=fmt)
    return path


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20) -> Path:
    """``root/cifar-10-batches-py``: pickled dicts with bytes keys, as the real files load."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    dump("batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
    for i, n in enumerate([per_batch] * 5 + [n_test]):
        labels = [int(x) for x in (np.arange(n) % 10)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(n) + 100 * (i == 5)  # first red pixel encodes the position
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        dump(name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                    b"filenames": [f"img{j}.png".encode() for j in range(n)]})  # fmt: skip
    return folder


def write_cifar100(root: Path, n: int = 12) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = ["apple", "aquarium_fish", "baby"]
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"fine_labels": [i % 3 for i in range(n)], "coarse_labels": [0] * n,
                         "data": np.zeros((n, 3072), dtype=np.uint8)}, f, protocol=2)  # fmt: skip
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": ["x"]}, f, protocol=2)
    return folder


def write_svhn(root: Path, n: int = 10) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)
        x[0, 0, 0, :] = np.arange(n)
        y = (np.arange(n) % 10).reshape(-1, 1)
        y[y == 0] = 10  # SVHN stores the digit 0 as label 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def write_imagefolder(root: Path, classes: list[str], per_class: int = 4, splits: tuple[str, ...] = ()) -> Path:
    for split in splits or ("",):
        for c, cls in enumerate(classes):
            for j in range(per_class):
                color_image(root / split / cls / f"{j}.png", 10 * c + j)
    return root


def write_oxford_pets(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    rows = {"trainval": [("Abyssinian_1", 1), ("american_bulldog_2", 2), ("Abyssinian_3", 1)],
            "test": [("american_bulldog_5", 2)]}  # fmt: skip
    for split, items in rows.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{i} {c} 1 {c}\n" for i, c in items))
        for i, c in items:
            color_image(base / "images" / f"{i}.jpg", c, fmt="JPEG")
    return base


def write_fgvc_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\nBAE 146-200\n")
    rows = {"train": [("0001", "707-320"), ("0002", "BAE 146-200")], "val": [("0003", "A300B4")],
            "test": [("0004", "BAE 146-200")]}  # fmt: skip
    for split, items in rows.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in items))
        for i, _ in items:
            color_image(data / "images" / f"{i}.jpg", int(i), fmt="JPEG")
    return root / "fgvc-aircraft-2013b"


def write_food101(root: Path) -> Path:
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n")
    (base / "meta" / "train.txt").write_text("apple_pie/1\nbaby_back_ribs/2\napple_pie/3\n")
    (base / "meta" / "test.txt").write_text("baby_back_ribs/4\n")
    for e in ("apple_pie/1", "baby_back_ribs/2", "apple_pie/3", "baby_back_ribs/4"):
        color_image(base / "images" / f"{e}.jpg", int(e[-1]), fmt="JPEG")
    return base


def write_clevr(root: Path, counts: dict[str, list[int]], with_scenes: bool = True) -> Path:
    base = root / "CLEVR_v1.0"
    for split, cs in counts.items():
        names = [f"CLEVR_{split}_{i:06d}.png" for i in range(len(cs))]
        for i, name in enumerate(names):
            color_image(base / "images" / split / name, i)
        if with_scenes:
            scenes = [{"image_index": i, "image_filename": n, "objects": [{"shape": "cube"}] * c}
                      for i, (n, c) in enumerate(zip(names, cs, strict=True))]  # fmt: skip
            (base / "scenes").mkdir(parents=True, exist_ok=True)
            (base / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes}))
        qs = []
        for i, (n, c) in enumerate(zip(names, cs, strict=True)):
            qs.append({"image_index": i, "image_filename": n, "question_index": 2 * i,
                       "question": "How many cubes are there?", "answer": str(c)})  # fmt: skip
            qs.append({"image_index": i, "image_filename": n, "question_index": 2 * i + 1,
                       "question": "Is there a red ball?", "answer": "no"})  # fmt: skip
        (base / "questions").mkdir(parents=True, exist_ok=True)
        (base / "questions" / f"CLEVR_{split}_questions.json").write_text(json.dumps({"questions": qs}))
    return base


def write_hateful_memes(root: Path) -> Path:
    rows = {"train": [(1, 0, "hello"), (2, 1, "bad words"), (3, 0, "nice"), (4, 1, "mean")],
            "dev_seen": [(5, 1, "rude"), (6, 0, "kind")]}  # fmt: skip
    for split, items in rows.items():
        lines = [json.dumps({"id": i, "img": f"img/{i:05d}.png", "label": y, "text": t}) for i, y, t in items]
        (root / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        for i, _, _ in items:
            color_image(root / "img" / f"{i:05d}.png", i)
    return root


def write_pope(root: Path, subset: str = "random", n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        image = f"COCO_val2014_{i:012d}.jpg"
        color_image(root / "val2014" / image, i, fmt="JPEG")
        lines.append(json.dumps({"question_id": i + 1, "image": image, "text": f"Is there a thing{i} in the image?",
                                 "label": "yes" if i % 2 == 0 else "no"}))  # fmt: skip
    (root / f"coco_pope_{subset}.json").write_text("\n".join(lines) + "\n")
    return root


def write_manifest(root: Path, rows: list[dict], name: str = "manifest.jsonl") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if not (root / r["image"]).exists():
            color_image(root / r["image"], len(r["image"]))
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
