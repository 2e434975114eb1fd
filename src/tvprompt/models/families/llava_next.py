"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``) with a fixed any-resolution grid.

LLaVA-NeXT's processor picks a grid from ``image_grid_pinpoints`` by the image's size, tiles the
resized, zero-padded image and prepends a base view resized to the tower's input. Prompted images
all have the prompt's H×W, so the grid is the same for every image of a run: it is chosen once
per call from (H, W) exactly as ``LlavaNextImageProcessor`` chooses it, and everything else
(aspect-preserving resize, centred zero padding, row-major tiles, base view) is done in torch,
differentiably. A 224×224 prompt on llava-v1.6 (pinpoints from 336×672) gives a 1×2 grid:
3 tower passes of 336×336 per image. For one tile, save the checkpoint with
``image_grid_pinpoints = [[S, S]]`` (S = the tower's input size) in ``config.json`` and
``preprocessor_config.json``: base view + one tile.

Prompt format: ``[INST] <image>\\n{prompt} [/INST]`` for Mistral-based checkpoints,
``USER: <image>\\n{prompt} ASSISTANT:`` (LLaVA-1.5's) otherwise. Features, captured at the projector
in the forward that computes the loss: ``encoder`` = the selected tower states of the base view and
all tiles, (B, tiles·N, D); ``projected`` = the projector output for them (the LLM sees these,
minus the padding rows that unpadding drops, plus one newline token per row).
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F

from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing, interpolate
from ..registry import register_family
from ..tiny import TinySpec, init_responsive_, register_tiny
from .llava import LlavaStyleAdapter, tiny_clip_vision, tiny_llama

MISTRAL_FORMAT = "[INST] <image>\n{prompt} [/INST]"


@register_family("llava_next")
class LlavaNextAdapter(LlavaStyleAdapter):
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    display_name = "LLaVA-NeXT"
    llm = "Vicuna, Mistral"
    notes = "fixed any-res grid chosen from the prompt size (base view + tiles)"

    def setup(self, source: str) -> None:
        text_type = getattr(self.model.config.text_config, "model_type", "")
        if text_type == "mistral":
            self.prompt_format = MISTRAL_FORMAT

    @property
    def pinpoints(self) -> list[list[int]]:
        return [list(map(int, p)) for p in self.model.config.image_grid_pinpoints]

    def grid(self, image_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(best resolution, resized size) that the HF processor uses for an (H, W) image."""
        from transformers.image_processing_utils import select_best_resolution

        best = tuple(select_best_resolution(list(image_size), self.pinpoints))
        h, w = image_size
        scale_w, scale_h = best[1] / w, best[0] / h
        if scale_w < scale_h:
            new = (min(math.ceil(h * scale_w), best[0]), best[1])
        else:
            new = (best[0], min(math.ceil(w * scale_h), best[1]))
        return best, new  # type: ignore[return-value]

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[0,1] (B,3,H,W) -> (B, 1 + tiles, 3, S, S): base view then row-major tiles; differentiable."""
        pre = self.preprocessing
        x = pixels01.to(self.device).float()
        size = pre.size[0]
        best, new = self.grid((int(x.shape[-2]), int(x.shape[-1])))
        resized = interpolate(x, new, pre.resample).clamp(0, 1)
        top, left = (best[0] - new[0]) // 2, (best[1] - new[1]) // 2
        padded = F.pad(resized, (left, best[1] - new[1] - left, top, best[0] - new[0] - top))
        b, gh, gw = x.shape[0], best[0] // size, best[1] // size
        tiles = padded.view(b, 3, gh, size, gw, size).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, 3, size, size)
        base = interpolate(x, (size, size), pre.resample).clamp(0, 1)
        patches = torch.cat([base[:, None], tiles], dim=1)
        return pre.normalize(patches.flatten(0, 1)).view(patches.shape).to(self.dtype)

    def num_image_tokens(self, image_size: tuple[int, int]) -> int:
        from transformers import LlavaNextProcessor

        vc = self.model.config.vision_config
        ns = types.SimpleNamespace(
            image_processor=types.SimpleNamespace(image_grid_pinpoints=self.pinpoints),
            patch_size=int(vc.patch_size),
            num_additional_image_tokens=1 if self.model.config.vision_feature_select_strategy == "full" else 0,
        )
        ns._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, ns)
        size = int(vc.image_size)
        return int(LlavaNextProcessor._get_number_of_features(ns, image_size[0], image_size[1], size, size))

    def _image_sizes(self, batch_size: int, image_size: tuple[int, int]) -> torch.Tensor:
        return torch.tensor([list(image_size)] * batch_size, dtype=torch.long, device=self.device)

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: Any) -> dict[str, Any]:
        if pixel_values is None:
            return {}
        return {"pixel_values": pixel_values, "image_sizes": self._image_sizes(pixel_values.shape[0], batch.image_size)}


@register_tiny("llava_next", special_tokens={"image_token": "<image>"})
def tiny_llava_next(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                    pinpoints: list[list[int]] | None = None) -> TinySpec:
    from transformers import LlavaNextConfig

    grid = pinpoints or [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaNextConfig(
        vision_config=tiny_clip_vision(image_size, patch_size, hidden),
        text_config=tiny_llama(tokenizer, hidden),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                             shortest_edge=image_size)
    return TinySpec(config, "LlavaNextForConditionalGeneration", pre, "LlavaNextImageProcessor",
                    init=init_responsive_, processor_extra={"image_grid_pinpoints": grid, "do_pad": True})
