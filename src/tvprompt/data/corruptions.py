"""The 15 corruptions of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, 2019) x 5 severities, for Tab. 9.

Implemented with numpy / scipy / PIL after the reference scripts' parameters, at one of two
strengths (:data:`STRENGTHS`):

- ``cifar10c`` (the default): the ``make_cifar_c.py`` constants, for 32x32 images;
- ``imagenetc``: the ``make_imagenet_c.py`` constants, for 224x224 images (far stronger: e.g.
  Gaussian noise σ 0.08-0.38 instead of 0.04-0.10), the strength to compare with ImageNet-C
  numbers on images of 224 px and more.

Spatial sizes (blur radii, displacements) scale with the image side / the table's side (32 or 224).
These differ from the reference by necessity:

- ``frost`` blends a procedurally generated ice texture (the reference ships frost photos);
- ``glass_blur`` swaps every pixel with a random neighbour per iteration, vectorised (the
  reference swaps pixels one at a time in a Python loop);
- ``motion_blur`` / ``snow`` use a one-sided Gaussian line kernel in place of ImageMagick's
  motion blur.

Every function takes an RGB float (H, W, 3) array in [0, 1], the severity's constants ``c`` (a row of
:data:`TABLES`), the spatial scale ``k`` and a numpy Generator, and returns the same shape in [0, 1].
:func:`corrupt` wraps them for (3, H, W) tensors.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage

Fn = Callable[[np.ndarray, Any, float, np.random.Generator], np.ndarray]
_REGISTRY: dict[str, Fn] = {}


def _register(fn: Fn) -> Fn:
    _REGISTRY[fn.__name__] = fn
    return fn


def _to_uint8_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255 + 0.5))


def _from_pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32) / 255.0


def _blur_each(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(x[..., c], kernel, mode="mirror") for c in range(3)], axis=-1)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    r = max(radius, 0.5)
    size = np.arange(-int(np.ceil(r)), int(np.ceil(r)) + 1)
    xx, yy = np.meshgrid(size, size)
    k = (xx**2 + yy**2 <= r**2).astype(np.float64)
    k /= k.sum()
    return ndimage.gaussian_filter(k, sigma=alias_blur)


def _line_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """One-sided motion blur: Gaussian-weighted sum of copies shifted along ``angle`` (degrees)."""
    n = max(int(round(radius)), 1)
    t = np.arange(n + 1)
    w = np.exp(-(t**2) / (2 * max(sigma, 1e-3) ** 2))
    w /= w.sum()
    rad = np.deg2rad(angle)
    pad = [(n, n), (n, n)] + [(0, 0)] * (x.ndim - 2)
    xp = np.pad(x, pad, mode="reflect" if min(x.shape[:2]) > n else "edge")
    h, wd = x.shape[:2]
    out = np.zeros_like(x, dtype=np.float64)
    for ti, wi in zip(t, w, strict=True):
        dy, dx = int(round(ti * np.sin(rad))), int(round(ti * np.cos(rad)))
        out += wi * xp[n + dy : n + dy + h, n + dx : n + dx + wd]
    return out


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    zoom = (h / ch, w / cw) + ((1,) if x.ndim == 3 else ())
    out = ndimage.zoom(crop, zoom, order=1)
    return out[:h, :w]


def _plasma_fractal(size: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1], ``size`` a power of two."""
    maparray = np.zeros((size, size))
    step = size
    wibble = 100.0
    while step >= 2:
        half = step // 2
        wibble /= wibbledecay
        # squares
        corners = maparray[0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, 0)
        sq = (sq + np.roll(sq, -1, 1)) / 4
        maparray[half:size:step, half:size:step] = sq + rng.uniform(-wibble, wibble, sq.shape)
        # diamonds
        d0 = maparray[half:size:step, half:size:step]
        c0 = maparray[0:size:step, 0:size:step]
        ld = np.roll(d0, 1, 1) + d0
        lc = c0 + np.roll(c0, -1, 0)
        maparray[half:size:step, 0:size:step] = (ld + lc) / 4 + rng.uniform(-wibble, wibble, ld.shape)
        td = np.roll(d0, 1, 0) + d0
        tc = c0 + np.roll(c0, -1, 1)
        maparray[0:size:step, half:size:step] = (td + tc) / 4 + rng.uniform(-wibble, wibble, td.shape)
        step = half
    maparray -= maparray.min()
    return maparray / max(maparray.max(), 1e-12)


# ---- noise --------------------------------------------------------------------------------------
@_register
def gaussian_noise(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(size=x.shape, scale=c)


@_register
def shot_noise(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x * c) / c


@_register
def impulse_noise(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


# ---- blur ---------------------------------------------------------------------------------------
@_register
def defocus_blur(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    r, alias = c
    return _blur_each(x, _disk(r * k, alias * k))


@_register
def glass_blur(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iters = c
    delta = max(1, int(round(delta * k)))
    x = ndimage.gaussian_filter(x, sigma=(sigma * k, sigma * k, 0))
    h, w = x.shape[:2]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for _ in range(iters):
        dy = rng.integers(-delta, delta, size=(h, w), endpoint=False)
        dx = rng.integers(-delta, delta, size=(h, w), endpoint=False)
        x = x[np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)]
    return ndimage.gaussian_filter(x, sigma=(sigma * k, sigma * k, 0))


@_register
def motion_blur(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = c
    # ImageMagick's radius is the kernel extent; the visible smear is set by sigma
    return _line_blur(x, min(radius, 3 * sigma) * k, sigma * k, rng.uniform(-45, 45))


@_register
def zoom_blur(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    top, step = c
    factors = np.arange(1, top, step)  # includes 1.0, as in the reference: (x + sum of zooms) / (n + 1)
    out = x.copy()
    for f in factors:
        out += x if f == 1 else _clipped_zoom(x, float(f))
    return out / (len(factors) + 1)


# ---- weather ------------------------------------------------------------------------------------
@_register
def snow(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, thresh, radius, sigma, blend = c
    h, w = x.shape[:2]
    layer = rng.normal(size=(h, w), loc=loc, scale=scale)
    layer = _clipped_zoom(layer, zoom)
    layer[layer < thresh] = 0
    layer = _line_blur(np.clip(layer, 0, 1), min(radius, 3 * sigma) * k, sigma * k, rng.uniform(-135, -45))
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return x + layer[..., None] + np.rot90(layer, k=2)[..., None]


def _frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Ice-crystal-like texture: multi-scale noise with sharp streaks, bluish white."""
    size = 1 << int(np.ceil(np.log2(max(h, w, 8))))
    base = _plasma_fractal(size, 1.6, rng)[:h, :w]
    streaks = ndimage.gaussian_filter(rng.random((h, w)), 0.6)
    streaks = np.clip((streaks - streaks.mean()) * 6 + 0.5, 0, 1)
    tex = np.clip(0.6 * base + 0.4 * streaks, 0, 1)
    return tex[..., None] * np.array([0.85, 0.92, 1.0])


@_register
def frost(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    a, b = c
    return a * x + b * _frost_texture(x.shape[0], x.shape[1], rng)


@_register
def fog(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    a, decay = c
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w, 8))))
    top = x.max()
    x = x + a * _plasma_fractal(size, decay, rng)[:h, :w, None]
    return x * top / (top + a)


# ---- digital ------------------------------------------------------------------------------------
@_register
def brightness(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return hsv_to_rgb(hsv)


@_register
def contrast(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


@_register
def elastic_transform(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, affine = c  # fractions of the side
    h, w = x.shape[:2]
    side = min(h, w)
    # random affine as in the reference: three points at the centre +- side//3 jittered by up to affine*side
    cy0, cx0, sq = h // 2, w // 2, side // 3
    src = np.array([[cy0 + sq, cx0 + sq], [cy0 + sq, cx0 - sq], [cy0 - sq, cx0 - sq]], dtype=np.float64)
    dst = src + rng.uniform(-affine * side, affine * side, size=src.shape)
    a = np.linalg.solve(np.c_[dst, np.ones(3)], np.c_[src, np.ones(3)])[:, :2].T  # dst -> src
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = a[:, :2] @ np.stack([yy.ravel(), xx.ravel()]) + a[:, 2:3]
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma * side + 1e-6) * alpha * side
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma * side + 1e-6) * alpha * side
    cy = coords[0].reshape(h, w) + dy
    cx = coords[1].reshape(h, w) + dx
    return np.stack([ndimage.map_coordinates(x[..., c], [cy, cx], order=1, mode="reflect") for c in range(3)], -1)


@_register
def pixelate(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    im = _to_uint8_pil(x).resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return _from_pil(im.resize((w, h), Image.BOX))


@_register
def jpeg_compression(x: np.ndarray, c: Any, k: float, rng: np.random.Generator) -> np.ndarray:
    quality = c
    buf = io.BytesIO()
    _to_uint8_pil(x).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf, formats=["JPEG"]) as im:
        return _from_pil(im.convert("RGB"))


CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
assert set(CORRUPTIONS) == set(_REGISTRY)

# Per strength, per corruption: the constants of severities 1..5, as in the reference scripts.
TABLES: dict[str, dict[str, list[Any]]] = {
    "cifar10c": {  # make_cifar_c.py
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        "zoom_blur": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                              (0.1, 0.03, 0.03)],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "imagenetc": {  # make_imagenet_c.py
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        # the reference gives these in pixels as multiples of 244 on a 224 image ("244 should have been
        # 224"): as fractions of the side, the multiples times 244 / 224
        "elastic_transform": [tuple(v * 244 / 224 for v in row) for row in
                              [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
                               (0.12, 0.01, 0.02)]],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
}
STRENGTHS: tuple[str, ...] = tuple(TABLES)
SIDES = {"cifar10c": 32.0, "imagenetc": 224.0}  # the image side each table was made for
assert all(set(t) == set(CORRUPTIONS) and all(len(v) == 5 for v in t.values()) for t in TABLES.values())


def corrupt(image: torch.Tensor, name: str, severity: int, rng: np.random.Generator | int = 0,
            strength: str = "cifar10c") -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a (3, H, W) float [0, 1] tensor.

    ``strength``: whose constants (:data:`STRENGTHS`: ``cifar10c`` or ``imagenetc``).
    ``rng`` is a numpy Generator or an int seed; the same seed gives the same output.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if strength not in TABLES:
        raise ValueError(f"unknown corruption strength {strength!r}; choose from {', '.join(STRENGTHS)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    x = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)
    k = min(x.shape[:2]) / SIDES[strength]
    out = _REGISTRY[name](x, TABLES[strength][name][severity - 1], k, rng)
    out = np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).to(image.dtype)
