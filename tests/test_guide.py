"""CLIP-like guides: tiny CLIP and SigLIP checkpoints loaded through load_guide("hf:<dir>")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tvprompt.errors import TvpError, UsageError
from tvprompt.models.base import Guide
from tvprompt.models.guide import build_tiny_guide
from tvprompt.models.registry import list_guides, load_guide

from .hf_processors import load_image_processor

TEXTS = ["a photo of a circle", "a photo of a red square", "three stars"]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def guide(request, tmp_path_factory):
    directory = build_tiny_guide(request.param, tmp_path_factory.mktemp(request.param) / "guide", seed=0)
    return load_guide(f"hf:{directory}", device="cpu")


def _image(h: int = 40, w: int = 52) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = np.stack([np.sin(5 * xx + c) * np.cos(3 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
    return (np.clip(smooth, 0, 1) * 255).round().astype(np.uint8)


def test_guides_are_registered():
    assert {"clip", "siglip", "open_clip"} <= set(list_guides())


def test_loads_frozen(guide):
    assert isinstance(guide, Guide)
    assert all(not p.requires_grad for p in guide.model.parameters())
    assert not guide.model.training
    assert guide.logit_scale > 0


def test_text_features_are_normalised_and_distinct(guide):
    feats = guide.encode_text(TEXTS)
    assert feats.shape[0] == len(TEXTS) and not feats.requires_grad
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(TEXTS)))
    assert (feats[0] - feats[1]).abs().max() > 1e-4


def test_image_encoding_is_normalised_and_differentiable(guide):
    pixels = torch.rand(2, 3, 48, 48, requires_grad=True)
    feats = guide.encode_image(pixels)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))
    text = guide.encode_text(TEXTS[:2])
    (guide.logit_scale * (feats * text).sum(-1)).mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_preprocessing_and_features_match_the_hf_processor(guide):
    processor = load_image_processor(guide.model_id.split(":", 1)[1])
    array = _image()
    expected = torch.as_tensor(np.asarray(processor(images=Image.fromarray(array),
                                                    return_tensors="np")["pixel_values"]))
    pixels = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    ours = guide.preprocess(pixels)
    assert (ours - expected).abs().max().item() < 0.03  # PIL uint8 rounding; see models/preprocessing.py
    with torch.no_grad():
        reference = guide.model.get_image_features(pixel_values=expected.float())
        reference = torch.nn.functional.normalize(getattr(reference, "pooler_output", reference), dim=-1)
        torch.testing.assert_close(guide.encode_image(pixels), reference, atol=2e-2, rtol=0)


def test_large_detailed_images_are_antialiased_like_pil(guide):
    processor = load_image_processor(guide.model_id.split(":", 1)[1])
    array = np.random.default_rng(0).integers(0, 256, size=(160, 208, 3), dtype=np.uint8)  # 5x downscale of noise
    expected = torch.as_tensor(np.asarray(processor(images=Image.fromarray(array),
                                                    return_tensors="np")["pixel_values"]))
    ours = guide.preprocess(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)
    assert (ours - expected).abs().max().item() < 0.05  # without antialiasing: errors of about 1


def test_an_mllm_directory_is_not_a_guide(tmp_path):
    from tvprompt.models.tiny import build_tiny_model

    directory = build_tiny_model("llava", tmp_path / "llava")
    with pytest.raises(UsageError, match="unknown guide type 'llava'"):
        load_guide(f"hf:{directory}")


def test_open_clip_without_the_extra_says_how_to_install():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(TvpError, match=r"tvprompt\[open_clip\]"):
            load_guide("open_clip:ViT-B-32/laion2b_s34b_b79k")
    else:
        pytest.skip("open_clip is installed")
