"""Loading options of the HF adapters (on the tiny LLaVA): dtype, attention fallback, checkpointing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tvprompt.errors import UsageError
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model

PROMPTS = ["What shape is this?", "How many shapes are there?"]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_model("llava", tmp_path_factory.mktemp("llava") / "model", seed=0)


def _grad(adapter, pixels):
    pixels = pixels.clone().requires_grad_(True)
    adapter.lm_loss(pixels, PROMPTS, ["circle", "3"]).backward()
    return pixels.grad


def test_tiny_builds_are_seeded(tmp_path, llava_dir):
    again = load_file(build_tiny_model("llava", tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model("llava", tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(llava_dir / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_gradient_checkpointing_gives_the_same_pixel_gradients(llava_dir):
    pixels = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    plain = load_adapter(f"hf:{llava_dir}", device="cpu")
    ckpt = load_adapter(f"hf:{llava_dir}", device="cpu", gradient_checkpointing=True)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in ckpt.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and not any(m.training for m in ckpt.model.modules() if isinstance(m, torch.nn.Dropout))
    calls = []
    for layer in layers:  # count checkpointed layer calls
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    torch.testing.assert_close(_grad(ckpt, pixels), _grad(plain, pixels))
    assert len(calls) == len(layers)
    # scoring (no grad) still uses the KV cache with checkpointing on
    torch.testing.assert_close(ckpt.score_choices(pixels, PROMPTS, ["a", "b"]),
                               plain.score_choices(pixels, PROMPTS, ["a", "b"]))


def test_eager_and_sdpa_agree_and_unavailable_attention_falls_back(llava_dir):
    pixels = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    sdpa = load_adapter(f"hf:{llava_dir}", device="cpu")
    eager = load_adapter(f"hf:{llava_dir}", device="cpu", attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    torch.testing.assert_close(sdpa.score_choices(pixels, PROMPTS, ["a", "b c"]),
                               eager.score_choices(pixels, PROMPTS, ["a", "b c"]), atol=1e-5, rtol=1e-5)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        fallback = load_adapter(f"hf:{llava_dir}", device="cpu", attn_implementation="flash_attention_2")
        assert fallback.model.config._attn_implementation == "eager"
    with pytest.raises(UsageError, match="attn_implementation"):
        load_adapter(f"hf:{llava_dir}", device="cpu", attn_implementation="fast")


def test_bf16_runs_and_keeps_fp32_losses(llava_dir):
    adapter = load_adapter(f"hf:{llava_dir}", device="cpu", dtype="bf16")
    assert adapter.dtype == torch.bfloat16
    pixels = torch.rand(2, 3, 48, 48, requires_grad=True)
    loss = adapter.lm_loss(pixels, PROMPTS, ["circle", "3"])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert pixels.grad.dtype == torch.float32 and pixels.grad.abs().sum() > 0
