"""Reading an uploaded image for the service: size-limited, decoded by :mod:`tvprompt.imageio`."""

from __future__ import annotations

import tempfile

import torch
from fastapi import HTTPException, UploadFile

from ..errors import ImageError
from .settings import Settings


def read_upload_image(upload: UploadFile, settings: Settings) -> torch.Tensor:
    """(3, h, w) in [0, 1]; 413 over ``max_image_bytes``, 400 (naming "image", never a server path) when unreadable."""
    from ..imageio import load_image

    data = upload.file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"image is over the limit of {settings.max_image_bytes} bytes")
    with tempfile.NamedTemporaryFile(prefix="tvp-image-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name, max_pixels=settings.max_image_pixels)
        except ImageError as e:
            raise ImageError(str(e).replace(tmp.name, "image")) from None
