"""The adapter contract on a CUDA device, fp32 and bf16 (opt-in: ``pytest -m gpu``).

``TVP_TEST_DEVICE=cpu pytest -m gpu`` runs the same checks on the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model, tiny_variants
from tvprompt.prompt import VisualPrompt

DEVICE = os.environ.get("TVP_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
VARIANTS = tiny_variants()
PROMPTS = ["What shape is this?", "How many shapes are there in the picture? Answer with one word."]
CHOICES = ["circle", "red square", "3", "no"]
# bf16 logits carry ~3 significant digits; scores are means of log-probs around -6
SCORE_ATOL = {"float32": 1e-3, "bf16": 0.08}


@pytest.fixture(scope="module", params=VARIANTS, ids=[v[0] for v in VARIANTS])
def directory(request, tmp_path_factory):
    name, family, overrides = request.param
    return build_tiny_model(family, tmp_path_factory.mktemp(name) / "model", seed=0, **overrides)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_contract_on_device(directory, dtype):
    adapter = load_adapter(f"hf:{directory}", device=DEVICE, dtype=dtype)
    assert adapter.device.type == torch.device(DEVICE).type
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)).to(DEVICE)

    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8).to(DEVICE)
    with torch.no_grad():
        prompt.delta.uniform_(0.2, 0.8)
    loss, feats = adapter.lm_loss_with_features(prompt.apply(images), PROMPTS, ["circle", "3"], kind="encoder")
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and feats.shape[0] == 2
    loss.backward()
    grad = prompt.delta.grad.abs().sum(0)
    border = prompt.mask[0].bool()
    assert (grad[border] > 0).all() and (grad[~border] == 0).all()

    scores = adapter.score_choices(images, PROMPTS, CHOICES)
    with torch.no_grad():
        brute = torch.tensor([[-adapter.lm_loss(images[b : b + 1], [PROMPTS[b]], [c]).item() for c in CHOICES]
                              for b in range(2)])
    torch.testing.assert_close(scores.cpu(), brute, atol=SCORE_ATOL[dtype], rtol=0)
    assert len(adapter.generate(images, PROMPTS, max_new_tokens=3)) == 2


def test_checkpointing_on_device(directory):
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = []
    for ckpt in (False, True):
        adapter = load_adapter(f"hf:{directory}", device=DEVICE, dtype="float32", gradient_checkpointing=ckpt)
        pixels = images.clone().requires_grad_(True)
        adapter.lm_loss(pixels, PROMPTS, ["circle", "3"]).backward()
        grads.append(pixels.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
