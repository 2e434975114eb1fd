"""PIL's resampling filters as differentiable matrices (for processors torch has no kernel for).

PIL resizes separably: each output pixel of a row is a normalised, filter-weighted sum of input
pixels in a window of ``support * max(scale, 1)`` around its centre. Those weights form an
``(out, in)`` matrix per axis, so ``resize(x) = W_h @ x @ W_wᵀ`` reproduces PIL's arithmetic in
float (PIL additionally rounds to uint8 after each pass). Chained resizes compose into one matrix
per axis (``W2 @ W1``), which is how Idefics3's two Lanczos resizes cost one small matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch


def _sinc(x: float) -> float:
    return 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 < x < 3.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "lanczos": (_lanczos, 3.0), "bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0),
}


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int, kind: str) -> np.ndarray:
    """(out_size, in_size) weights of PIL's ``precompute_coeffs`` for one axis."""
    fn, support = FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = np.array([fn((x + 0.5 - center) / filterscale) for x in range(lo, hi)])
        total = k.sum()
        w[i, lo:hi] = k / total if total != 0.0 else k
    return w


@lru_cache(maxsize=64)
def resize_matrix(sizes: tuple[int, ...], kind: str) -> np.ndarray:
    """One axis' matrix for resizing through ``sizes`` (``(in, mid, ..., out)``), stages composed."""
    if kind not in FILTERS:
        raise ValueError(f"unknown PIL filter {kind!r}; known: {', '.join(FILTERS)}")
    out = np.eye(sizes[0])
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        out = _weights(a, b, kind) @ out
    return out


def pil_resize(x: torch.Tensor, heights: tuple[int, ...], widths: tuple[int, ...], kind: str) -> torch.Tensor:
    """Resize (..., H, W) through the chained ``heights`` / ``widths`` like PIL ``kind``; differentiable."""
    wh, ww = _matrices(tuple(heights), tuple(widths), kind, x.device, x.dtype)
    return wh @ x @ ww.T


@lru_cache(maxsize=32)
def _matrices(heights: tuple[int, ...], widths: tuple[int, ...], kind: str, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The two axis matrices on the input's device, built once per canvas size (no copy per step)."""
    wh = torch.as_tensor(resize_matrix(heights, kind), dtype=dtype, device=device)
    ww = torch.as_tensor(resize_matrix(widths, kind), dtype=dtype, device=device)
    return wh, ww
