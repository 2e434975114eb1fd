"""Import prompts saved by the paper's released code (``{"perturbation": Tensor[3, H, W]}``)."""

from __future__ import annotations

import os

import torch

from .errors import PromptFileError, UsageError
from .files import load_torch_weights
from .prompt import PromptConfig, VisualPrompt


def derive_width(delta: torch.Tensor) -> int:
    """Smallest p such that every non-zero value lies in the border of width p."""
    nz = delta.abs().amax(0) > 0
    if not nz.any():
        raise UsageError("the perturbation is all zeros: cannot derive the prompt width; pass --width")
    h, w = nz.shape
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    edge = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))
    return int(edge[nz].max().item()) + 1


def import_released_checkpoint(path: str | os.PathLike, width: int | None = None) -> VisualPrompt:
    """Read a released-code ``.pth`` safely (``weights_only=True``) into a padding :class:`VisualPrompt`."""
    obj = load_torch_weights(path, PromptFileError)
    if isinstance(obj, dict):
        if "perturbation" not in obj:
            keys = ", ".join(map(str, list(obj)[:8])) or "none"
            raise PromptFileError(f"{path}: missing key 'perturbation' (found: {keys})")
        delta = obj["perturbation"]
    else:
        delta = obj
    if not isinstance(delta, torch.Tensor):
        raise PromptFileError(f"{path}: 'perturbation' is a {type(delta).__name__}, expected a tensor")
    delta = delta.detach().float().squeeze(0) if delta.ndim == 4 and delta.shape[0] == 1 else delta.detach().float()
    if delta.ndim != 3 or delta.shape[0] != 3:
        raise PromptFileError(f"{path}: 'perturbation' has shape {tuple(delta.shape)}, expected (3, H, W)")
    if not torch.isfinite(delta).all():
        raise PromptFileError(f"{path}: 'perturbation' holds NaN or infinite values")
    p = width if width is not None else derive_width(delta)
    in_range = bool(delta.min() >= 0 and delta.max() <= 1)
    config = PromptConfig(
        shape="padding",
        image_height=int(delta.shape[1]),
        image_width=int(delta.shape[2]),
        prompt_width=p,
        clamp=in_range,  # the released code leaves δ unbounded
        fit="crop", resample="bicubic",  # its images: shorter side to H - 2p (bicubic) + centre crop
        method="imported (released TVP code)",
        data={"imported_from": os.path.basename(str(path))},
    )
    prompt = VisualPrompt(config)
    with torch.no_grad():
        prompt.delta.copy_(delta * prompt.mask)
    return prompt
