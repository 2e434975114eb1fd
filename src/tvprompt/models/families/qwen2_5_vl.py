"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): Qwen2-VL's adapter with the 2.5 vision tower.

Same fixed grid, patchification, chat format and M-RoPE positions as :mod:`tvprompt.models.families.qwen2_vl`
(the image processor is Qwen2-VL's). Passing ``mm_token_type_ids`` and explicit 3-D positions matters
more here: without them transformers 5 silently falls back to 1-D positions.

The 2.5 vision tower attends within windows and runs its blocks and merger in window order (the
model restores the processor's order after the merger). Both feature kinds are taken at the merger,
so they come in window order: a fixed permutation for a given canvas, which FCA's squared
distance between prompted and reference features does not see.
"""

from __future__ import annotations

from typing import Any

from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import sharpen_lm_head
from .qwen2_vl import QWEN_SPECIAL_TOKENS, Qwen2VLAdapter, tiny_qwen_ids, tiny_qwen_processor, tiny_qwen_text


@register_family("qwen2_5_vl")
class Qwen2_5VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    display_name = "Qwen2.5-VL"
    llm = "Qwen2.5"


@register_tiny("qwen2_5_vl", special_tokens=QWEN_SPECIAL_TOKENS)
def tiny_qwen2_5_vl(tokenizer: Any, hidden: int = 32) -> TinySpec:
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(
        text_config=tiny_qwen_text(tokenizer, hidden),
        # window_size 28 = 2 patches of 14: the 4x4 patch grid has several windows, so window attention
        # and its reordering are exercised; block 1 attends over the whole image.
        vision_config=dict(depth=2, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden, window_size=28,
                           fullatt_block_indexes=[1]),
        **tiny_qwen_ids(tokenizer),
    )
    pre = ImagePreprocessing(size=(56, 56), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, "Qwen2_5_VLForConditionalGeneration", pre, "Qwen2VLImageProcessor",
                    processor_extra=tiny_qwen_processor("Qwen2VLImageProcessor"), init=sharpen_lm_head)
