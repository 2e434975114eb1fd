"""How an image of any size becomes the prompt's inner image: one rule for training, evaluation,
``tvp apply`` and the service, so that the same image gives the same pixels on every path.

- ``squash``: resize to the target size, ignoring the aspect ratio.
- ``crop``: resize the shorter side to the target (the longer side keeps the aspect ratio,
  truncated as torchvision's ``Resize(int)`` does), then cut the centre (torchvision's
  ``CenterCrop`` offsets). The released TVP code does this with PIL bicubic on the original image.

Kernels are torch's antialiased ``bilinear`` or ``bicubic`` (PIL's filters, a = −0.5), in float:
no uint8 rounding between passes. Bicubic overshoots, so its result is clipped to [0, 1].
An image already at the target size is returned as it is (so fitting twice changes nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import UsageError

FITS = ("squash", "crop")
RESAMPLES = ("bilinear", "bicubic")


def crop_resize_size(h: int, w: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h', w') the ``crop`` fit resizes an h×w image to before cutting ``size`` from its centre."""
    th, tw = size
    if th == tw:  # torchvision Resize(int): the shorter side becomes th, the longer is truncated
        if h <= w:
            return th, max(tw, int(th * w / h))
        return max(th, int(tw * h / w)), tw
    scale = max(th / h, tw / w)
    return max(th, int(h * scale)), max(tw, int(w * scale))


def _interpolate(images: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    out = F.interpolate(images, size=size, mode=resample, antialias=True, align_corners=False)
    return out.clamp(0.0, 1.0) if resample == "bicubic" else out


def fit_images(images: torch.Tensor, size: tuple[int, int], fit: str = "squash",
               resample: str = "bilinear") -> torch.Tensor:
    """(B, 3, h, w) float [0, 1] -> (B, 3, *size) by ``fit`` with the ``resample`` kernel."""
    if fit not in FITS:
        raise UsageError(f"image fit {fit!r} is not one of {', '.join(FITS)}")
    if resample not in RESAMPLES:
        raise UsageError(f"resample {resample!r} is not one of {', '.join(RESAMPLES)}")
    size = (int(size[0]), int(size[1]))
    h, w = images.shape[-2:]
    if (h, w) == size:
        return images
    if fit == "squash":
        return _interpolate(images, size, resample)
    rh, rw = crop_resize_size(h, w, size)
    if (rh, rw) != (h, w):
        images = _interpolate(images, (rh, rw), resample)
    top = int(round((rh - size[0]) / 2.0))
    left = int(round((rw - size[1]) / 2.0))
    return images[..., top : top + size[0], left : left + size[1]]
