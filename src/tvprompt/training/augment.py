"""Input diversity for EVP/TVP: random horizontal flip and optional scale/translate jitter.

Applied to the raw images *before* prompting, batched (no per-sample loop), from an explicit
``torch.Generator`` so a run (and a resumed run) draws the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:
    """What was drawn for one batch; ``deterministic`` means the result depends only on ``flipped``."""

    flipped: torch.Tensor  # (B,) bool
    deterministic: bool


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool = True,
    scale: float = 0.0,
    translate: float = 0.0,
) -> tuple[torch.Tensor, Augmentation]:
    """Augment (B, 3, h, w) images in [0, 1].

    ``flip``: each image is mirrored left-right with probability ½.
    ``scale``: zoom by a factor drawn uniformly from [1 − scale, 1 + scale] (0 = off).
    ``translate``: shift by up to ``translate`` × the image size in x and y (0 = off).
    Random numbers are drawn on the CPU generator in a fixed order, whatever the options.
    """
    b = images.shape[0]
    u = torch.rand((b, 2), generator=generator)  # flip, zoom
    t = torch.rand((b, 2), generator=generator)
    flipped = (u[:, 0] < 0.5) if flip else torch.zeros(b, dtype=torch.bool)
    out = torch.where(flipped.to(images.device)[:, None, None, None], images.flip(-1), images)
    if scale > 0 or translate > 0:
        zoom = 1.0 + scale * (2 * u[:, 1] - 1)
        shift = translate * 2 * (2 * t - 1)  # affine_grid coordinates span [-1, 1]: size 2
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = 1.0 / zoom
        theta[:, 1, 1] = 1.0 / zoom
        theta[:, :, 2] = shift
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out, Augmentation(flipped=flipped, deterministic=not (scale > 0 or translate > 0))
