"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): one grid per prompt canvas, differentiable patchification.

Qwen2-VL's processor picks a resolution per image (``smart_resize``: both sides multiples of
``patch_size * merge_size``, area within ``[min_pixels, max_pixels]``) and hands the vision tower a
flat ``(num_patches, 3 * temporal_patch_size * patch_size**2)`` tensor. Every prompted image has
the prompt's canvas size, so the adapter uses **one fixed grid per canvas**: the size the
checkpoint's processor picks for an H×W image (224×224 stays 224×224 = 16×16 patches = 64 LLM
tokens with the released min/max pixels), the same grid the processor would give the prompted PNG.
No per-image dynamic resolution, no video. The image is resized to that grid (bicubic, not at all
when H and W are already multiples of 28) and patchified with the processor's own reshape/permute,
in torch, so gradients flow to the pixels.

Prompt format (the Qwen2-VL chat template with its default system prompt)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|><|image_pad|>×N<|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

transformers 5 needs ``mm_token_type_ids`` to build the 3-D (M-RoPE) positions and raises without
them (Qwen2.5-VL silently falls back to 1-D positions). The adapter computes the 3-D positions
itself, vectorised, for left-padded rows and for tokens that continue a cached prefix, and passes
them as ``position_ids`` together with ``image_grid_thw`` and ``mm_token_type_ids``.

Features (both from the forward that feeds the LLM, by hooks on the patch merger): ``encoder`` =
the vision blocks' output, the merger's input, ``(B, grid_h*grid_w, D)`` in the processor's patch
order (merge windows together); ``projected`` = the merger output, ``(B, N, D_text)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from ...errors import TvpError
from ..chat import turn_end_id
from ..hf import HFAdapter, TextBatch, capture_io, read_local_or_hub_processor_config
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import sharpen_lm_head

NOMINAL_CANVAS = 224  # input_size reports the grid of this (the default) canvas size
SYSTEM_PROMPT = "You are a helpful assistant."
QWEN_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>", "im_start_token": "<|im_start|>", "im_end_token": "<|im_end|>",
}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size Qwen2-VL's image processor resizes an image of ``height × width`` to."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, C, H, W) normalised images -> (B * H/patch * W/patch, C * temporal * patch²), the processor's layout.

    Patches are ordered by merge window (``merge × merge`` neighbours together), each patch flattened
    as (channel, time, row, col) with the still image repeated ``temporal`` times. Pure reshapes, so
    differentiable.
    """
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, gh/m, gw/m, m, m, c, p, p
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    return x.reshape(b * gh * gw, c * temporal * patch * patch)


def mrope_positions(ids: torch.Tensor, mask: torch.Tensor, image_token_id: int,
                    llm_grid: tuple[int, int]) -> torch.Tensor:
    """(3, B, L) M-RoPE position ids of left-padded rows holding one image block of ``h*w`` tokens.

    Same values as ``Qwen2VLModel.get_rope_index`` for such rows (tested): text tokens count up by one;
    the image block starting after ``k`` text tokens gets (t, h, w) = (k, k + row, k + col); text after
    it continues from ``k + max(h, w)``. Pads get 0.
    """
    gh, gw = llm_grid
    real = mask.bool()
    is_img = (ids == image_token_id) & real
    text = (real & ~is_img).long()
    img = is_img.long()
    text_before = text.cumsum(-1) - text  # real text tokens before this one
    img_index = img.cumsum(-1) - img  # index inside the image block
    after_image = (img.cumsum(-1) > 0) & ~is_img
    text_pos = text_before + after_image.long() * max(gh, gw)
    t_pos = torch.where(is_img, text_before, text_pos)
    h_pos = torch.where(is_img, text_before + img_index // gw, text_pos)
    w_pos = torch.where(is_img, text_before + img_index % gw, text_pos)
    return torch.stack([t_pos, h_pos, w_pos]).masked_fill(~real, 0)


@register_family("qwen2_vl")
class Qwen2VLAdapter(HFAdapter):
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    display_name = "Qwen2-VL"
    llm = "Qwen2"
    add_bos = False  # Qwen's chat format has no BOS
    answer_prefix = ""  # the answer follows "assistant\n" directly
    explicit_positions = False  # 3-D positions come from forward_kwargs / continuation_positions
    notes = "one grid per canvas (the processor's size for HxW), Qwen chat format, no video"
    system_prompt: ClassVar[str | None] = SYSTEM_PROMPT

    # ---- preprocessing: the canvas' grid + patchify -------------------------------------------
    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        vc = config.vision_config
        factor = int(vc.patch_size) * int(vc.spatial_merge_size)
        return qwen_preprocessing(None, factor, ImagePreprocessing(size=(factor, factor), mean=CLIP_MEAN, std=CLIP_STD))

    def setup(self, source: str) -> None:
        vc = self.model.config.vision_config
        self.patch, self.merge = int(vc.patch_size), int(vc.spatial_merge_size)
        self.temporal = int(vc.temporal_patch_size)
        processor = read_local_or_hub_processor_config(source)
        self.min_pixels, self.max_pixels = pixel_bounds(processor)
        self.preprocessing = qwen_preprocessing(processor, self.patch * self.merge,
                                                self.default_preprocessing(self.model.config))

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) in pixels the vision tower sees for a prompted image of ``image_size``."""
        return smart_resize(*image_size, self.patch * self.merge, self.min_pixels, self.max_pixels)

    def patch_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = self.grid_size(image_size)
        return h // self.patch, w // self.patch

    def llm_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        gh, gw = self.patch_grid(image_size)
        return gh // self.merge, gw // self.merge

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[0,1] (B,3,H,W) -> (B * grid_h * grid_w, 3 * temporal * patch²) flat patches; differentiable."""
        if pixels01.ndim != 4 or pixels01.shape[1] != 3:
            raise TvpError(f"pixels: expected a (B, 3, H, W) tensor, got shape {tuple(pixels01.shape)}")
        pre = dataclasses.replace(self.preprocessing, size=self.grid_size((pixels01.shape[-2], pixels01.shape[-1])))
        x = pre(pixels01.to(self.device)).to(self.dtype)
        return patchify(x, self.patch, self.merge, self.temporal)

    def grid_thw(self, batch_size: int, image_size: tuple[int, int]) -> torch.Tensor:
        return torch.tensor([[1, *self.patch_grid(image_size)]] * batch_size, dtype=torch.long, device=self.device)

    # ---- text side ------------------------------------------------------------------------------
    @property
    def end_id(self) -> int:
        return turn_end_id(self.tokenizer, "<|im_end|>")

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        cfg = self.model.config
        h, w = self.llm_grid(image_size)
        system = "" if self.system_prompt is None else f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n"
        image = [int(cfg.vision_start_token_id)] + [self.image_token_id] * (h * w) + [int(cfg.vision_end_token_id)]
        return (self.text_ids(f"{system}<|im_start|>user\n") + image
                + self.text_ids(f"{prompt}<|im_end|>\n<|im_start|>assistant\n"))

    def positions(self, batch: TextBatch) -> torch.Tensor:
        if batch.image_size is None:
            raise TvpError("Qwen2-VL: a text batch without the prompted image size; cannot place M-RoPE positions")
        return mrope_positions(batch.input_ids, batch.attention_mask, self.image_token_id,
                               self.llm_grid(batch.image_size))

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        out: dict[str, Any] = {"position_ids": self.positions(batch)}
        if pixel_values is not None:
            assert batch.image_size is not None  # positions() checked it
            out.update(pixel_values=pixel_values,
                       image_grid_thw=self.grid_thw(batch.input_ids.shape[0], batch.image_size),
                       mm_token_type_ids=(batch.input_ids == self.image_token_id).int())
        return out

    def continuation_positions(self, prefix: TextBatch, offsets: torch.Tensor) -> torch.Tensor:
        start = self.positions(prefix).amax(dim=(0, 2)) + 1  # (N,) next position after each cached row
        return (start[:, None] + offsets).unsqueeze(0).expand(3, -1, -1)  # text tokens: same t, h, w

    # ---- features ---------------------------------------------------------------------------------
    # The patch merger's input is the ``encoder`` feature, its output the ``projected`` one; forward
    # hooks take both from the very forward that feeds the LLM (any transformers 5.x output class).
    def capture_vision(self, batch: TextBatch) -> Any:
        return capture_io(self.model.model.visual.merger, batch.input_ids.shape[0])

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        gh, gw = self.patch_grid(image_size)
        n = pixel_values.shape[0] // (gh * gw)
        with capture_io(self.model.model.visual.merger, n) as box:
            self.model.model.get_image_features(pixel_values, self.grid_thw(n, image_size))
        return box

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        """(B, grid_h*grid_w, D_vision) merger input or (B, N, D_text) merger output."""
        feats = image_outputs.input if kind == "encoder" else image_outputs.output
        return feats.reshape(image_outputs.batch_size, -1, feats.shape[-1])


def pixel_bounds(processor: dict[str, Any] | None) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL processor config (old or new spelling)."""
    processor = processor or {}
    size = processor.get("size") if isinstance(processor.get("size"), dict) else {}
    min_pixels = int(processor.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
    max_pixels = int(processor.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
    return min_pixels, max_pixels


def qwen_preprocessing(processor: dict[str, Any] | None, factor: int,
                       default: ImagePreprocessing) -> ImagePreprocessing:
    """Mean/std from a Qwen2-VL processor config; ``size`` = the grid of a 224×224 canvas (``input_size``)."""
    processor = processor or {}
    mean = tuple(processor.get("image_mean") or default.mean)
    std = tuple(processor.get("image_std") or default.std)
    grid = smart_resize(NOMINAL_CANVAS, NOMINAL_CANVAS, factor, *pixel_bounds(processor))
    return ImagePreprocessing(size=grid, mean=mean, std=std, resample="bicubic")  # type: ignore[arg-type]


# ---- tiny checkpoints --------------------------------------------------------------------------
TINY_QWEN_PIXELS = 56 * 56  # min = max pixels: a 64x64 canvas -> 56x56 = 4x4 patches = 2x2 LLM tokens


def tiny_qwen_text(tokenizer: Any, hidden: int = 32) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        # theta 100: with head_dim 8, a 10000 base barely rotates the h/w sections over a 2x2 grid
        rope_parameters={"rope_type": "default", "rope_theta": 100.0, "mrope_section": [1, 1, 2]},
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def tiny_qwen_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def tiny_qwen_processor(image_processor_type: str) -> dict[str, Any]:
    return {"image_processor_type": image_processor_type, "size": {"shortest_edge": TINY_QWEN_PIXELS,
            "longest_edge": TINY_QWEN_PIXELS}, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "resample": 3}


@register_tiny("qwen2_vl", special_tokens=QWEN_SPECIAL_TOKENS)
def tiny_qwen2_vl(tokenizer: Any, hidden: int = 32) -> TinySpec:
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(
        text_config=tiny_qwen_text(tokenizer, hidden),
        vision_config=dict(depth=2, embed_dim=hidden, hidden_size=hidden, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **tiny_qwen_ids(tokenizer),
    )
    pre = ImagePreprocessing(size=(56, 56), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, "Qwen2VLForConditionalGeneration", pre, "Qwen2VLImageProcessor",
                    processor_extra=tiny_qwen_processor("Qwen2VLImageProcessor"), init=sharpen_lm_head)
