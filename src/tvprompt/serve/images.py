"""Reading an uploaded image for the service: size- and pixel-limited, decoded by :mod:`tvprompt.imageio`."""

from __future__ import annotations

import tempfile

import torch
from fastapi import HTTPException, UploadFile

from ..errors import ImageError, ImageTooLarge
from .settings import Settings


def read_upload_bytes(upload: UploadFile, limit: int, what: str) -> bytes:
    """The upload's bytes; 413 naming ``what`` when over ``limit``."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{what} is over the limit of {limit} bytes")
    return data


def decode_image(data: bytes, settings: Settings) -> torch.Tensor:
    """(3, h, w) in [0, 1]; 413 over ``max_image_pixels``, 400 (naming "image", never a server path)
    when unreadable or not in an accepted format. Call inside the apply gate: decoding costs memory."""
    from ..imageio import load_image

    with tempfile.NamedTemporaryFile(prefix="tvp-image-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name, max_pixels=settings.max_image_pixels)
        except ImageTooLarge as e:
            raise HTTPException(413, f"{str(e).replace(tmp.name, 'image')} (max_image_pixels)") from None
        except ImageError as e:
            raise ImageError(str(e).replace(tmp.name, "image")) from None
