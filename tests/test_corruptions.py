"""The 15 CIFAR-10-C / ImageNet-C corruptions: determinism, value range, severity ordering, the two strengths."""

from __future__ import annotations

import pytest
import torch

from tvprompt.data.corruptions import CORRUPTIONS, corrupt


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0.1, 0.9, 32).repeat(32, 1)  # smooth gradient + texture, like a photo
    return (torch.stack([base, base.T, 1 - base]) * 0.8 + 0.2 * torch.rand(3, 32, 32, generator=g)).clamp(0, 1)


def test_all_fifteen():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_in_range_and_changes_the_image(name, image):
    for severity in (1, 3, 5):
        a = corrupt(image, name, severity, 123)
        b = corrupt(image, name, severity, 123)
        assert a.shape == image.shape and a.dtype == image.dtype
        assert torch.equal(a, b)
        assert a.min() >= 0.0 and a.max() <= 1.0
        assert not torch.equal(a, image)


# elastic_transform trades a strong affine warp (severity 1) for local elastic warps (5), as in the
# reference, so its mean pixel change is not monotone in severity.
@pytest.mark.parametrize("name", [c for c in CORRUPTIONS if c != "elastic_transform"])
def test_severity_five_is_stronger_than_one(name, image):
    d1 = (corrupt(image, name, 1, 0) - image).abs().mean()
    d5 = (corrupt(image, name, 5, 0) - image).abs().mean()
    assert d5 > d1


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "fog", "snow", "frost"])
def test_random_corruptions_follow_the_seed(name, image):
    assert not torch.equal(corrupt(image, name, 3, 0), corrupt(image, name, 3, 1))


def test_non_square_and_large_images():
    x = torch.rand(3, 48, 80)
    for name in CORRUPTIONS:
        y = corrupt(x, name, 5, 0)
        assert y.shape == x.shape, name


def test_known_values():
    x = torch.full((3, 8, 8), 0.5)
    x[0] = 0.2
    out = corrupt(x, "contrast", 2, 0)  # (x - mean) * 0.5 + mean, per channel: a constant channel is unchanged
    assert torch.allclose(out, x)
    y = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = corrupt(y, "contrast", 5, 0)
    mean = y.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(out, ((y - mean) * 0.15 + mean).clamp(0, 1), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(torch.rand(3, 8, 8), "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(torch.rand(3, 8, 8), "fog", 0)


def test_imagenetc_strength_uses_the_imagenet_c_constants():
    from tvprompt.data.corruptions import STRENGTHS, TABLES

    assert STRENGTHS == ("cifar10c", "imagenetc")
    # a few rows of make_imagenet_c.py / make_cifar_c.py, read off the reference scripts
    assert TABLES["imagenetc"]["gaussian_noise"] == [0.08, 0.12, 0.18, 0.26, 0.38]
    assert TABLES["imagenetc"]["jpeg_compression"] == [25, 18, 15, 10, 7]
    assert TABLES["cifar10c"]["jpeg_compression"] == [80, 65, 58, 50, 40]
    for name in CORRUPTIONS:  # every row differs between the two tables
        assert TABLES["imagenetc"][name] != TABLES["cifar10c"][name], name
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 224, 224, generator=g, dtype=torch.float64)
    mean = x.mean((1, 2), keepdim=True)
    for strength, factor in (("cifar10c", 0.4), ("imagenetc", 0.2)):  # contrast, severity 3
        out = corrupt(x, "contrast", 3, 0, strength=strength)
        assert torch.allclose(out, ((x - mean) * factor + mean).clamp(0, 1), atol=1e-6), strength
    # the noise is as strong as the table says: σ 0.18 (ImageNet-C) vs 0.08 (CIFAR-10-C), away from clipping
    mid = torch.full((3, 224, 224), 0.5, dtype=torch.float64)
    for strength, sigma in (("cifar10c", 0.08), ("imagenetc", 0.18)):
        noise = corrupt(mid, "gaussian_noise", 3, 0, strength=strength) - mid
        assert abs(float(noise.std()) - sigma) < 0.1 * sigma, strength
    with pytest.raises(ValueError, match="strength"):
        corrupt(x, "fog", 1, strength="imagenet")

