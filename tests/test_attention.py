"""`tvp analyze attention` (Fig. 4): attention rollout maps and the PNG grid, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tvprompt.data import shapeworld as sw
from tvprompt.errors import UsageError
from tvprompt.evaluation import attention as at
from tvprompt.models.tiny import build_tiny_model
from tvprompt.prompt import PromptConfig, VisualPrompt


def test_rollout_of_uniform_attention_mixes_in_the_identity():
    t = 5
    uniform = torch.full((1, 2, t, t), 1 / t)
    got = at.rollout([uniform])
    assert torch.allclose(got[0], 0.5 * torch.eye(t) + 0.5 / t)
    two = at.rollout([uniform, uniform])
    assert torch.allclose(two[0], got[0] @ got[0]) and torch.allclose(two.sum(-1), torch.ones(1, t))
    with pytest.raises(UsageError, match="at least one layer"):
        at.rollout([])


def test_token_map_reads_the_cls_row_or_the_mean():
    rolled = torch.rand(2, 10, 10)  # CLS + 3x3
    assert torch.equal(at.token_map(rolled), rolled[:, 0, 1:].reshape(2, 3, 3))
    square = torch.rand(2, 9, 9)  # no CLS
    assert torch.allclose(at.token_map(square), square.mean(1).reshape(2, 3, 3))
    with pytest.raises(UsageError, match="not a square"):
        at.token_map(torch.rand(1, 7, 7))


def test_normalise_scales_to_unit_range_and_zeroes_constant_maps():
    maps = torch.stack([torch.arange(4.0).view(2, 2) + 3, torch.full((2, 2), 0.7)])
    got = at.normalise(maps)
    assert torch.allclose(got[0], torch.tensor([[0, 1 / 3], [2 / 3, 1]])) and torch.equal(got[1], torch.zeros(2, 2))


def test_centre_share_counts_patches_inside_the_border():
    maps = torch.ones(1, 4, 4)  # 224 px, width 56: patch centres 28, 84, 140, 196 -> the middle 2x2 inside
    assert at.centre_share(maps, 56, 224).item() == pytest.approx(4 / 16)
    assert at.centre_share(maps, 0, 224).item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    sw.write_dataset("shape", 12, root / "data", split_mix=True)
    prompt = VisualPrompt(PromptConfig(image_height=64, image_width=64, prompt_width=8))
    with torch.no_grad():
        prompt.delta.copy_(torch.rand_like(prompt.delta))
        prompt.project_()
    prompt.save_pretrained(root / "prompt")
    models = [f"hf:{build_tiny_model(f, root / f, seed=0)}" for f in ("llava", "blip2")]
    return root, models


def test_maps_are_finite_normalised_and_see_the_prompt(world):
    from tvprompt.models.registry import load_adapter

    root, models = world
    prompt = VisualPrompt.from_pretrained(root / "prompt", device="cpu")
    images = torch.rand(2, 3, 64, 64)
    for model_id in models:
        adapter = load_adapter(model_id, device="cpu", dtype="float32", attn_implementation="eager")
        g = adapter.model.config.vision_config.image_size // adapter.model.config.vision_config.patch_size
        plain, framed = at.attention_maps(adapter, images), at.attention_maps(adapter, prompt.apply(images))
        for m in (plain, framed):
            assert m.shape == (2, g, g) and torch.isfinite(m).all()
            assert torch.allclose(m.flatten(1).amin(1), torch.zeros(2))
            assert torch.allclose(m.flatten(1).amax(1), torch.ones(2))
        assert not torch.allclose(plain, framed)


def test_cli_writes_the_grid_with_one_row_per_image_and_two_panels_per_model(world, tmp_path, tvp):
    root, models = world
    out = tmp_path / "att"
    r = tvp("analyze", "attention", "--prompt", root / "prompt", "--model", *models, "--task", "shapeworld_shape",
            "--data", root / "data", "--n-images", "2", "--output", out)
    assert r.returncode == 0, r.stderr
    png = np.asarray(Image.open(out / "attention.png"))
    assert png.shape == (at.HEADER + 2 * at.CELL, (2 + 2 * len(models)) * at.CELL, 3)
    summary = json.loads((out / "attention.json").read_text())
    assert summary["images"] == 2 and summary["png"] == list(png.shape[:2])
    assert set(summary["models"]) == {"llava", "blip2"}
    for row in summary["models"].values():
        assert 0 <= row["centre_share_no_prompt"] <= 1 and 0 <= row["centre_share_prompt"] <= 1
    for r in range(2):  # every panel is drawn (none left blank)
        for c in range(2 + 2 * len(models)):
            cell = png[at.HEADER + r * at.CELL:at.HEADER + (r + 1) * at.CELL, c * at.CELL:(c + 1) * at.CELL]
            assert (cell != 255).any(axis=-1).mean() > 0.5, (r, c)
    # the second model's "prompt" panel of the first image differs from the plain image panel
    a = png[at.HEADER:at.HEADER + at.CELL, 0:at.CELL]
    b = png[at.HEADER:at.HEADER + at.CELL, 5 * at.CELL:6 * at.CELL]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_cli_errors_name_the_fix(world, tmp_path, tvp):
    root, models = world
    r = tvp("analyze", "attention", "--prompt", root / "prompt", "--model", models[0], "--task", "shapeworld_shape",
            "--data", root / "data", "--n-images", "0", "--output", tmp_path / "x")
    assert r.returncode != 0 and "--n-images must be >= 1" in r.stderr
    assert not (tmp_path / "x" / "attention.png").exists()
