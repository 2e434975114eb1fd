"""One image, one prompt, the same pixels on every path: the training batch, the evaluation batch,
`tvp apply` (the service's apply is byte-compared with `tvp apply` in test_serve_api.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvprompt.data import open_dataset
from tvprompt.evaluation.evaluate import Backends, EvalSetup, evaluate
from tvprompt.imageio import load_image
from tvprompt.prompt import VisualPrompt
from tvprompt.tasks import load_task
from tvprompt.training.config import resolve_config
from tvprompt.training.loop import train

from .toy import CHOICES, ToyAdapter

H, P = 32, 5


class Recording(ToyAdapter):
    """Keeps the prompted pixels it is given, per sample id order of the calls."""

    def __init__(self) -> None:
        super().__init__(0)
        self.seen: list[torch.Tensor] = []

    def lm_loss_with_features(self, pixels01, prompts, answers, kind="encoder"):
        self.seen.append(pixels01.detach().clone())
        return super().lm_loss_with_features(pixels01, prompts, answers, kind)

    def lm_loss(self, pixels01, prompts, answers):
        self.seen.append(pixels01.detach().clone())
        return super().lm_loss(pixels01, prompts, answers)

    def score_choices(self, pixels01, prompts, choices):
        self.seen.append(pixels01.detach().clone())
        return super().score_choices(pixels01, prompts, choices)


def _world(tmp_path: Path) -> tuple[Path, Path]:
    """Three non-square photos (wide, tall, odd sizes) in a manifest, and a task over it."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate([(45, 71), (70, 41), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "answer": CHOICES[i], "split": "train", "id": f"p{i}"})
    for split in ("val", "test"):  # the same images again
        rows += [{**rows[i], "split": split, "id": f"{split}{i}"} for i in range(3)]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "colors.yaml"
    task.write_text("version: 1\nname: colors\nkind: classification\nformat: manifest\ninstruction: 'Colour?'\n"
                    f"choices: {json.dumps(CHOICES)}\nmetrics: [top1]\n"
                    "splits: {train: train, val: val, test: test}\n")
    return manifest, task


@pytest.mark.parametrize("fit,resample", [("crop", "bicubic"), ("crop", "bilinear")])
def test_train_eval_and_apply_see_the_same_pixels(tmp_path, fit, resample):
    manifest, task = _world(tmp_path)
    spec = load_task(task)
    cfg = resolve_config("evp", flags={
        "sources": ["toy"], "task": str(task), "data": str(manifest), "steps": 1, "batch_size": 3, "image_size": H,
        "width": P, "val_split": None, "progress": False, "flip": False, "lr": 1e-9, "image_fit": fit,
        "image_resample": resample, "output": str(tmp_path / "run")})
    trainset = open_dataset(spec, str(manifest), "train")
    recorder = Recording()
    train(cfg, sources=[recorder], spec=spec, train_set=trainset)
    train_pixels = {s.answer: px for s, px in zip(_order(trainset, cfg), recorder.seen[0], strict=True)}

    prompt_dir = tmp_path / "run" / "prompt"
    prompt = VisualPrompt.from_pretrained(prompt_dir)
    assert (prompt.config.fit, prompt.config.resample) == (fit, resample)
    with torch.no_grad():  # δ after one tiny step is not 0; compare against δ = 0 on every path
        prompt.delta.zero_()
    prompt.save_pretrained(prompt_dir)
    applied = {}
    for i in range(3):
        with torch.no_grad():
            applied[CHOICES[i]] = prompt.apply(load_image(tmp_path / f"{i}.png")[None])[0]

    evaluated = Recording()
    backends = dataclasses.replace(Backends.default(), load_adapter=lambda _id: evaluated,
                                   fingerprint_model=lambda i: i)
    evaluate([prompt_dir], ["toy"], EvalSetup(task=str(task), data=str(manifest), split="test", batch_size=3),
             tmp_path / "eval", backends=backends)
    assert len(evaluated.seen) == 2  # the no-prompt cell, then the prompt's (its own batches)
    prompted = evaluated.seen[-1]
    assert prompted[:, :, :P].abs().max() == 0  # δ = 0: a black border, so this is the prompt's cell
    eval_pixels = {CHOICES[i]: prompted[i] for i in range(3)}  # the test split in file order

    for sid in applied:
        assert torch.equal(train_pixels[sid], applied[sid]), sid
        assert torch.equal(eval_pixels[sid], applied[sid]), sid


def _order(dataset, cfg):
    from tvprompt.data.batching import batch_order

    return [dataset[i] for i in batch_order(len(dataset), cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=0,
                                            drop_last=False)[0]]
