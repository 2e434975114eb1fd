"""A learnable toy task as a JSONL manifest + task YAML, for trainer tests on tiny real models.

Images are bright or dark noise (the label, "1" or "2" -- one token each for the tiny
tokenizers -- follows brightness) with a 3:1 class imbalance towards
``majority``, so that even a border prompt on a frozen, randomly initialised model can learn something
measurable: the class prior. Tests pick as ``majority`` the class the untrained model does *not*
prefer, so validation accuracy starts low and can rise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

TASK_YAML = """\
version: 1
name: toy-shapes
kind: classification
format: manifest
instruction: "How many shapes are there?"
answer: "{answer}"
choices: ["1", "2"]
tse_text: "a photo of {answer} shapes"
splits: {train: train, val: val, test: test}
"""


def write_task(root: Path, n_train: int = 24, n_val: int = 12, seed: int = 0,
               majority: str = "2") -> tuple[Path, Path]:
    """Write ``root/task.yaml`` and ``root/data/manifest.jsonl`` (+ PNGs); returns (task, data)."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    (data / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for split, n in (("train", n_train), ("val", n_val), ("test", 4)):
        for i in range(n):
            minority = "1" if majority == "2" else "2"
            label = majority if i % 4 else minority  # 3:1
            level = 200 if label == majority else 60
            arr = np.clip(rng.normal(level, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            name = f"img/{split}{i}.png"
            Image.fromarray(arr).save(data / name)
            lines.append(json.dumps({"image": name, "answer": label, "split": split, "id": f"{split}{i}"}))
    (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    task = root / "task.yaml"
    task.write_text(TASK_YAML)
    return task, data / "manifest.jsonl"
