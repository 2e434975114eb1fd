"""Fig. 4: where a model looks with and without a prompt — attention rollout over the vision tower.

Attention rollout (Abnar & Zuidema, 2020): per layer the head-averaged attention matrix, mixed with
the identity for the residual path (½A + ½I) and row-normalised; the product over the layers says
how much each output token draws on each input patch. The map of an image is the row of the CLS
token (CLIP / BLIP towers) or, for towers without one, the mean over all tokens, on the patch
grid, min-max scaled to [0, 1]. It describes the vision tower only (what the LLM then reads is not
part of it), which makes it comparable across families.

``attention_figure`` renders one PNG grid: a row per image; columns the image, the prompted image,
then per model the map without and with the prompt laid over the image that model was shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..files import atomic_path, write_text_atomic

CELL = 224  # side of one panel in pixels
HEADER = 28  # height of the label strip above the panels


def vision_tower(model: Any) -> torch.nn.Module:
    """The ViT of a transformers MLLM (LLaVA: ``vision_tower``; BLIP-2 / InstructBLIP: ``vision_model``)."""
    for owner in (model, getattr(model, "model", None)):
        for name in ("vision_tower", "vision_model"):
            tower = getattr(owner, name, None) if owner is not None else None
            if isinstance(tower, torch.nn.Module):
                return tower
    raise UsageError(f"{type(model).__name__}: no vision tower found (expected vision_tower or vision_model)")


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, T, T) attention rollout of per-layer (B, heads, T, T) attention weights."""
    if not attentions:
        raise UsageError("attention rollout needs at least one layer's attention weights")
    result = None
    for layer in attentions:
        a = layer.float().mean(1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None
    return result


def token_map(rolled: torch.Tensor) -> torch.Tensor:
    """(B, T, T) rollout -> (B, g, g) patch map: the CLS row when T = g² + 1, the mean row when T = g²."""
    t = rolled.shape[-1]
    g = math.isqrt(t - 1)
    if g * g == t - 1:
        m = rolled[:, 0, 1:]
    else:
        g = math.isqrt(t)
        if g * g != t:
            raise UsageError(f"vision tower returned {t} tokens: not a square patch grid (with or without CLS)")
        m = rolled.mean(1)
    return m.reshape(-1, g, g)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (g, g) map to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


@torch.no_grad()
def attention_maps(adapter: Any, pixels01: torch.Tensor) -> torch.Tensor:
    """(B, g, g) rollout maps in [0, 1] of ``adapter``'s vision tower for [0,1] images (B, 3, H, W).

    The adapter must be loaded with ``attn_implementation="eager"`` (fused kernels return no weights).
    LLaVA-NeXT's any-res input is a stack of views; the map is of the first, the whole image resized.
    """
    pixel_values = adapter.preprocess(pixels01)
    if pixel_values.ndim == 5:
        pixel_values = pixel_values[:, 0]
    out = vision_tower(adapter.model)(pixel_values=pixel_values, output_attentions=True)
    attentions = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]
    if not attentions:
        raise UsageError(f"{adapter.model_id}: the vision tower returned no attention weights; "
                         "load it with attn_implementation='eager'")
    return normalise(token_map(rollout(attentions)))


def centre_share(maps: torch.Tensor, width: int, size: int) -> torch.Tensor:
    """Per map, the share of its mass on patches whose centre lies inside the prompt's inner image area."""
    g = maps.shape[-1]
    centres = (torch.arange(g, dtype=torch.float32) + 0.5) * size / g
    inside = (centres >= width) & (centres <= size - width)
    mask = inside[:, None] & inside[None, :]
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    return (maps * mask).flatten(1).sum(1) / total


def _overlay(image: np.ndarray, amap: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image with a (g, g) map in [0, 1] upsampled and blended over it as a heat map."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    up = np.asarray(Image.fromarray((amap * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0
    heat = colormaps["jet"](up)[..., :3] * 255
    return (0.45 * image + 0.55 * heat).clip(0, 255).astype(np.uint8)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) [0, 1] -> (CELL, CELL, 3) uint8."""
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(arr).resize((CELL, CELL), Image.BILINEAR))


def render_grid(images: torch.Tensor, prompted: torch.Tensor, maps: dict[str, tuple[torch.Tensor, torch.Tensor]],
                path: str | Path) -> tuple[int, int]:
    """Write the PNG grid; returns its (height, width).

    Rows: one per image. Columns: image, prompted image, then per model (in ``maps`` order) the map
    without the prompt over the image and the map with the prompt over the prompted image.
    """
    from PIL import Image, ImageDraw

    n = images.shape[0]
    labels = ["image", "prompted"]
    for name in maps:
        labels += [f"{name}: no prompt", f"{name}: prompt"]
    height, width = HEADER + n * CELL, len(labels) * CELL
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((c * CELL + 4, 8), label, fill="black")
    for r in range(n):
        plain, framed = _to_uint8(images[r]), _to_uint8(prompted[r])
        panels = [plain, framed]
        for without, with_prompt in maps.values():
            panels += [_overlay(plain, without[r].cpu().numpy()), _overlay(framed, with_prompt[r].cpu().numpy())]
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (c * CELL, HEADER + r * CELL))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return height, width


def attention_figure(prompt_dir: str | Path, models: Sequence[str], task: str, data: str | Path,
                     output: str | Path, *, split: str = "test", n_images: int = 4, seed: int = 0,
                     device: str = "cpu") -> dict[str, Any]:
    """Maps of the first ``n_images`` of ``split`` for every model, with and without the prompt:
    writes ``attention.png`` (the grid) and ``attention.json`` (shapes and centre shares)."""
    from ..data import open_dataset
    from ..imagefit import fit_images
    from ..models.registry import load_adapter
    from ..prompt import VisualPrompt

    if n_images < 1:
        raise UsageError("--n-images must be >= 1")
    if not models:
        raise UsageError("attention: give at least one --model")
    prompt = VisualPrompt.from_pretrained(prompt_dir, device="cpu").eval()
    ds = open_dataset(task, data, split, seed=seed)
    if len(ds) == 0:
        raise UsageError(f"{data}: split {split!r} has no samples")
    cfg = prompt.config
    size = (cfg.image_height, cfg.image_width)
    # the clean image is fitted as the prompt fits its inner image (crop/squash, kernel), at the full size
    images = torch.cat([fit_images(ds[i].image[None].float(), size, cfg.fit, cfg.resample)
                        for i in range(min(n_images, len(ds)))])
    with torch.no_grad():
        prompted = prompt.apply(images)
    maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    summary: dict[str, Any] = {"method": "attention rollout over the vision tower (CLS row, ½A + ½I per layer)",
                               "prompt": str(prompt_dir), "task": task, "split": split,
                               "images": int(images.shape[0]), "models": {}}
    for model_id in models:
        adapter = load_adapter(model_id, device=device, dtype="float32", attn_implementation="eager")
        without, with_prompt = attention_maps(adapter, images), attention_maps(adapter, prompted)
        name = model_id.split(":", 1)[-1].rstrip("/").split("/")[-1]
        maps[name] = (without, with_prompt)
        width = cfg.prompt_width if cfg.shape == "padding" else 0
        summary["models"][name] = {
            "grid": list(without.shape[-2:]),
            "centre_share_no_prompt": round(float(centre_share(without, width, size[0]).mean()), 4),
            "centre_share_prompt": round(float(centre_share(with_prompt, width, size[0]).mean()), 4),
        }
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary["png"] = list(render_grid(images, prompted, maps, out / "attention.png"))
    write_text_atomic(out / "attention.json", json.dumps(summary, indent=2) + "\n")
    return summary
