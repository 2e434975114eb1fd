"""ShapeWorld: a seeded procedural world of coloured shapes, the embedded default dataset.

Every sample is a pure function of ``(task, distribution, seed, index)``: the generator seeds a
fresh ``numpy`` generator from those four numbers, so a sample never depends on which other
samples were drawn, in which order, or in how many processes.

Tasks (analogues of the paper's benchmarks):

- ``shape``  recognition, one large object; 8 classes (CIFAR-10 analogue)
- ``color``  recognition of the object's colour; 8 classes
- ``count``  how many objects, 1..4 (CLEVR counting analogue)
- ``exist``  "Is there a <colour> shape in the image?", yes/no, balanced, with adversarial
  negatives (POPE analogue: a "no" asks for the look-alike of a colour that *is* there,
  e.g. orange when a red shape is present)

Distributions:

- ``pretrain``   plain dark backgrounds, large saturated objects; in the single-object tasks
  the object sits near the centre, like the subject of a CIFAR photo (what the zoo sees)
- ``downstream`` a shift: textured, cluttered mid-grey backgrounds, smaller and less centred
  objects, lower contrast. Zoo models are measurably weaker here; prompts are trained here.

The shapes are chosen to stay distinguishable at 64-pixel model inputs: filled silhouettes
with different outlines (circle, square, triangle, diamond, cross, star, hourglass) and one
with a hole (ring). Shapes are drawn upright, without anti-aliasing, and objects in one image
never touch (a gap of at least ``MIN_GAP`` pixels), so the labels can be checked from pixels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UsageError
from ..files import atomic_dir

DATA_VERSION = 2  # bump whenever rendering changes: zoo manifests record it
IMAGE_SIZE = 224
MIN_GAP = 6
MAX_COUNT = 4

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hourglass")
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 220),
    "orange": (250, 140, 20),
    "white": (240, 240, 240),
}
# Look-alike colours, for adversarial negatives of the existence task.
CONFUSABLE = {
    "red": "orange", "orange": "red", "yellow": "white", "white": "yellow",
    "green": "cyan", "cyan": "green", "blue": "magenta", "magenta": "blue",
}
COUNT_WORDS = tuple(str(i) for i in range(1, MAX_COUNT + 1))
TASKS = ("shape", "color", "count", "exist")
DISTRIBUTIONS = ("pretrain", "downstream")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)

QUESTIONS = {
    "shape": "What shape is in the image?",
    "color": "What color is the shape?",
    "count": "How many shapes are in the image?",
    "exist": "Is there a {color} shape in the image?",
}
CHOICES = {
    "shape": list(SHAPES),
    "color": list(COLORS),
    "count": list(COUNT_WORDS),
    "exist": ["yes", "no"],
}

# Object sizes (bounding-box side, pixels at 224) per (task family, distribution).
_SIZES = {
    ("single", "pretrain"): (100, 150),
    ("single", "downstream"): (70, 115),
    ("multi", "pretrain"): (44, 66),
    ("multi", "downstream"): (36, 56),
}
# How far (pixels at 224) a single object's centre may stray from the image centre.
_JITTER = {"pretrain": 10, "downstream": 28}
_TASK_IDS = {t: i for i, t in enumerate(TASKS)}
_DIST_IDS = {d: i for i, d in enumerate(DISTRIBUTIONS)}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    x: int  # centre, pixels
    y: int
    size: int  # side of the bounding box, pixels


@dataclass
class ShapeWorldSample:
    task: str
    distribution: str
    index: int
    image: np.ndarray  # (H, W, 3) uint8
    question: str
    answer: str
    choices: list[str]
    objects: list[SceneObject] = field(default_factory=list)
    split: str | None = None


def _check(task: str, distribution: str) -> None:
    if task not in TASKS:
        raise UsageError(f"unknown ShapeWorld task {task!r}; choose one of {', '.join(TASKS)}")
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"unknown ShapeWorld distribution {distribution!r}; choose pretrain or downstream")


def _rng(task: str, distribution: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _TASK_IDS[task], _DIST_IDS[distribution], int(index)])


def split_of(index: int, seed: int = 0) -> str:
    """Deterministic train/val/test assignment (60/20/20) of sample ``index``."""
    u = np.random.default_rng([int(seed), 7919, int(index)]).random()
    if u < SPLIT_FRACTIONS[0]:
        return SPLITS[0]
    return SPLITS[1] if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else SPLITS[2]


# ---------------------------------------------------------------- drawing


def shape_polygons(shape: str, x: float, y: float, size: float) -> list[list[tuple[float, float]]]:
    """Polygons (filled) approximating ``shape``; the ring is drawn separately (it has a hole)."""
    r = size / 2
    if shape == "square":
        h = 0.85 * r
        return [[(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]]
    if shape == "triangle":
        return [[(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)]]
    if shape == "diamond":
        return [[(x, y - r), (x + r, y), (x, y + r), (x - r, y)]]
    if shape == "cross":
        w = r / 3
        return [[(x - w, y - r), (x + w, y - r), (x + w, y + r), (x - w, y + r)],
                [(x - r, y - w), (x + r, y - w), (x + r, y + w), (x - r, y + w)]]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.42 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        return [pts]
    if shape == "hourglass":
        n = max(2.0, r * 0.15)  # a neck keeps the two halves one connected object
        return [[(x - r, y - r), (x + r, y - r), (x + n, y), (x + r, y + r), (x - r, y + r), (x - n, y)]]
    raise ValueError(shape)


def object_mask(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (size, size) mask of exactly the pixels ``obj`` covers."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    x, y, r = obj.x, obj.y, obj.size / 2
    if obj.shape in ("circle", "ring"):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        if obj.shape == "ring":  # the hole
            h = r * 0.55
            draw.ellipse([x - h, y - h, x + h, y + h], fill=0)
    else:
        for poly in shape_polygons(obj.shape, x, y, obj.size):
            draw.polygon(poly, fill=255)
    return np.asarray(im) > 0


# ---------------------------------------------------------------- scenes


def _background(rng: np.random.Generator, distribution: str, size: int) -> np.ndarray:
    if distribution == "pretrain":
        level = rng.integers(0, 60)
        return np.full((size, size, 3), level, dtype=np.float32)
    # downstream: the pretraining darkness plus low-frequency colour blotches, stripes and speckle
    base = rng.integers(0, 60)
    grid = rng.uniform(-25, 25, size=(6, 6, 3)).astype(np.float32)
    low = np.asarray(Image.fromarray((grid + 128).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                     np.float32) - 128
    period = rng.uniform(8, 20)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 8 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    speckle = rng.normal(0, 6, size=(size, size, 1)).astype(np.float32)
    return base + 25 + low + stripes[..., None] + speckle


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Thin line segments and dots: distractors that are not shapes."""
    for _ in range(int(rng.integers(2, 6))):
        col = tuple(int(c) for c in rng.integers(40, 230, size=3))
        x0, y0 = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            ang, length = rng.uniform(0, 2 * math.pi), rng.uniform(10, 40)
            draw.line([x0, y0, x0 + length * math.cos(ang), y0 + length * math.sin(ang)], fill=col, width=2)
        else:
            r = rng.uniform(1.5, 3.5)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=col)


def _place(rng: np.random.Generator, sizes: list[int], image_size: int) -> list[tuple[int, int]] | None:
    """Centres for objects of the given sizes that keep MIN_GAP between bounding circles."""
    placed: list[tuple[int, int, int]] = []
    margin = 4
    for s in sizes:
        for _ in range(200):
            lo, hi = margin + s // 2, image_size - margin - s // 2
            x, y = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            # bounding boxes (square) must be separated by MIN_GAP on some axis
            if all(abs(x - px) * 2 >= s + ps + 2 * MIN_GAP or abs(y - py) * 2 >= s + ps + 2 * MIN_GAP
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _scene(rng: np.random.Generator, task: str, distribution: str, image_size: int) -> tuple[list[SceneObject], dict]:
    scale = image_size / IMAGE_SIZE
    kind = "single" if task in ("shape", "color") else "multi"
    lo, hi = (int(v * scale) for v in _SIZES[(kind, distribution)])
    extra: dict = {}
    if kind == "single":
        n = 1
    elif task == "count":
        n = int(rng.integers(1, MAX_COUNT + 1))
    else:
        n = int(rng.integers(1, 4))
    if kind == "single":
        size = int(rng.integers(lo, hi + 1))
        j = int(_JITTER[distribution] * scale)
        half, c = size // 2 + 4, image_size // 2
        sizes = [size]
        centres = [tuple(int(np.clip(c + rng.integers(-j, j + 1), half, image_size - half)) for _ in range(2))]
    else:
        while True:
            sizes = [int(rng.integers(lo, hi + 1)) for _ in range(n)]
            centres = _place(rng, sizes, image_size)
            if centres is not None:
                break
    shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    palette = list(COLORS)
    if task == "exist":
        colors = [palette[int(i)] for i in rng.choice(len(palette), size=n, replace=False)]
        if rng.random() < 0.5:
            extra["asked"], extra["answer"] = colors[int(rng.integers(n))], "yes"
        else:  # adversarial negative: the look-alike of a present colour, if it is absent
            candidates = [CONFUSABLE[c] for c in colors if CONFUSABLE[c] not in colors]
            if not candidates:
                candidates = [c for c in palette if c not in colors]
            extra["asked"], extra["answer"] = candidates[int(rng.integers(len(candidates)))], "no"
    else:
        colors = [palette[int(rng.integers(len(palette)))] for _ in range(n)]
    objs = [SceneObject(shapes[i], colors[i], x, y, sizes[i]) for i, (x, y) in enumerate(centres)]
    return objs, extra


def render(objects: list[SceneObject], rng: np.random.Generator, distribution: str,
           image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw ``objects`` on a background of ``distribution``; (H, W, 3) uint8."""
    bg = _background(rng, distribution, image_size)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    if distribution == "downstream":
        _clutter(rng, ImageDraw.Draw(canvas), image_size)
    out = np.asarray(canvas, dtype=np.float32).copy()
    for obj in objects:
        mask = object_mask(obj, image_size)
        color = np.asarray(COLORS[obj.color], np.float32)
        if distribution == "downstream":  # lower contrast: blend towards the local background
            alpha = rng.uniform(0.6, 0.85)
            local = out[mask].mean(axis=0)
            color = alpha * color + (1 - alpha) * local
        out[mask] = color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def generate_sample(task: str, index: int, *, distribution: str = "pretrain", seed: int = 0,
                    image_size: int = IMAGE_SIZE) -> ShapeWorldSample:
    """Sample ``index`` of ``task``: a pure function of its arguments."""
    _check(task, distribution)
    rng = _rng(task, distribution, seed, index)
    objects, extra = _scene(rng, task, distribution, image_size)
    image = render(objects, rng, distribution, image_size)
    if task == "shape":
        question, answer = QUESTIONS["shape"], objects[0].shape
    elif task == "color":
        question, answer = QUESTIONS["color"], objects[0].color
    elif task == "count":
        question, answer = QUESTIONS["count"], str(len(objects))
    else:
        question, answer = QUESTIONS["exist"].format(color=extra["asked"]), extra["answer"]
    return ShapeWorldSample(task, distribution, index, image, question, answer, list(CHOICES[task]), objects)


def iter_samples(task: str, n: int, *, distribution: str = "pretrain", seed: int = 0, start: int = 0,
                 split_mix: bool = False) -> Iterator[ShapeWorldSample]:
    for i in range(start, start + n):
        s = generate_sample(task, i, distribution=distribution, seed=seed)
        if split_mix:
            s.split = split_of(i, seed)
        yield s


def generate_arrays(task: str, n: int, *, distribution: str = "pretrain", seed: int = 0,
                    start: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, H, W, 3) uint8 images, questions, answers: the in-memory form the zoo trains on."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    questions, answers = [], []
    for k, s in enumerate(iter_samples(task, n, distribution=distribution, seed=seed, start=start)):
        images[k] = s.image
        questions.append(s.question)
        answers.append(s.answer)
    return images, questions, answers


def manifest_record(sample: ShapeWorldSample, relpath: str) -> dict:
    rec: dict = {"image": relpath, "question": sample.question, "answer": sample.answer,
                 "choices": sample.choices}
    if sample.split is not None:
        rec["split"] = sample.split
    rec["objects"] = [asdict(o) for o in sample.objects]
    return rec


def write_dataset(task: str, n: int, output: str | os.PathLike, *, distribution: str = "pretrain",
                  seed: int = 0, split_mix: bool = False, overwrite: bool = False,
                  progress: bool = False) -> Path:
    """Write ``n`` PNGs under ``output/images/`` and ``output/manifest.jsonl``; returns the manifest path.

    Each manifest line is ``{"image", "question", "answer", "choices", "split"?, "objects"}``
    (``objects`` is ground truth for people and tests; readers may ignore it).
    """
    _check(task, distribution)
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"{output}: folder exists and is not empty; pass --overwrite or pick another --output")
    from tqdm import tqdm

    with atomic_dir(output) as tmp:
        (tmp / "images").mkdir()
        lines = []
        samples = iter_samples(task, n, distribution=distribution, seed=seed, split_mix=split_mix)
        for s in tqdm(samples, total=n, desc=f"shapeworld {task}", disable=not progress, unit="img"):
            rel = f"images/{task}_{distribution}_{s.index:06d}.png"
            # fast zlib level: the noisy downstream images barely compress, and level 6 took 3x the render
            Image.fromarray(s.image).save(tmp / rel, compress_level=1)
            lines.append(json.dumps(manifest_record(s, rel)))
        (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        info = {"generator": "tvprompt.data.shapeworld", "data_version": DATA_VERSION, "task": task,
                "distribution": distribution, "seed": seed, "n": n, "split_mix": split_mix}
        (tmp / "shapeworld.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output / "manifest.jsonl"
