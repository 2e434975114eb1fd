"""Safe image loading and PNG writing.

Only the raster formats in :data:`FORMATS` are decoded (PNG, JPEG, WebP, BMP, GIF, TIFF, the
netpbm family and ICO): Pillow is never asked to try its other plugins, some of which run
external programs (EPS runs Ghostscript) or parse rarely used formats. Such a file becomes an
RGB float tensor (3, h, w) in [0, 1]:
EXIF orientation is applied; palette, grey, 1-bit, CMYK and 16-bit images are converted;
transparent images are composited on a white background (what a viewer shows for most
documents and icons; pass ``background=`` to change it). Decompression bombs and images
over ``max_pixels`` are refused before decoding. Every failure is a one-line
:class:`~tvprompt.errors.ImageError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLarge
from .files import atomic_path

MAX_PIXELS = 64_000_000
# Pillow format names (``Image.open(formats=...)``) that are decoded; everything else is refused.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "ICO")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".ico"}
)
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on ``background``)."""
    if im.mode in _HIGH_DEPTH or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode != "F" else max(1.0, float(arr.max()) if arr.size else 1.0)
        arr = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        canvas = Image.new("RGB", im.size, background)
        canvas.paste(im, mask=im.getchannel("A"))
        return canvas
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, validate and fully decode an image file; EXIF orientation applied, mode untouched."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
                im.load()
                return ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file in an accepted format ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: refused as a possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: corrupt or truncated image ({reason})") from None


def load_image(
    path: str | os.PathLike, max_pixels: int = MAX_PIXELS, background: tuple[int, int, int] = (255, 255, 255)
) -> torch.Tensor:
    """Read an image file as an RGB float tensor (3, h, w) in [0, 1]."""
    im = open_image(path, max_pixels)
    try:
        return pil_to_tensor(to_rgb(im, background))
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot convert mode {im.mode} to RGB ({e})") from None


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float (3, h, w) in [0, 1]."""
    arr = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float (3, h, w) in [0, 1] -> 8-bit RGB PIL image (values clipped, rounded)."""
    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write (3, h, w) in [0, 1] as an RGB PNG atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tensor_to_pil(image).save(tmp, format="PNG")


def iter_image_files(root: str | os.PathLike) -> Iterator[Path]:
    """Image files (by suffix) under a folder, recursively, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield Path(dirpath) / name


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, never silently padded
