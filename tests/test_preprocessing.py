"""Model-side preprocessing: what an HF processor config says, and PIL's uint8 clipping."""

from __future__ import annotations

import torch

from tvprompt.models.preprocessing import ImagePreprocessing

DEFAULT = ImagePreprocessing(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_bicubic_overshoot_is_clamped_to_the_unit_range():
    pre = ImagePreprocessing(size=(24, 24), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resample="bicubic")
    edges = torch.zeros(1, 3, 8, 8)
    edges[..., ::2, :] = 1.0  # stripes: bicubic upsampling rings above 1 and below 0
    raw = pre.resize(edges)
    assert raw.max() > 1.0 and raw.min() < 0.0  # the overshoot exists ...
    out = pre(edges)
    assert out.max() == 1.0 and out.min() == 0.0  # ... and is clipped, as a uint8 PIL image would be
    assert torch.equal(out, raw.clamp(0, 1))


def test_integer_size_and_crop_size_are_read():
    square = ImagePreprocessing.from_processor_config({"size": 336}, DEFAULT)
    assert square.size == (336, 336) and square.shortest_edge is None
    cropped = ImagePreprocessing.from_processor_config({"size": {"shortest_edge": 256}, "crop_size": 240}, DEFAULT)
    assert cropped.size == (240, 240) and cropped.shortest_edge == 256
    dicts = ImagePreprocessing.from_processor_config(
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 200}}, DEFAULT)
    assert dicts.size == (240, 200)
    assert ImagePreprocessing.from_processor_config({}, DEFAULT).size == (224, 224)
