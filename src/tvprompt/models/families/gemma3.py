"""Gemma 3 (``Gemma3ForConditionalGeneration``), single 896×896 view (no pan-and-scan).

Prompt format (the Gemma 3 chat template, with the image expanded as ``Gemma3Processor`` does)::

    <bos><start_of_turn>user\\n\\n\\n<start_of_image><image_soft_token>×N<end_of_image>\\n\\n{prompt}<end_of_turn>
    \\n<start_of_turn>model\\n{answer}<end_of_turn>

(one line, wrapped here at a ``\\n``)

``token_type_ids`` mark the **image tokens** (1: bidirectional inside the image block, 0: text) —
the opposite role of PaliGemma's field, where 1 marks the causal answer suffix. Tokens after a cached
prefix are text, so continuation calls pass none (the model then builds a causal mask).

The processor resizes straight to the tower's size with bilinear and normalises with mean = std =
0.5; pan-and-scan crops are not used. Features: ``encoder`` = SigLIP's last hidden state
``(B, (S/patch)², D)``; ``projected`` = the pooled, normed, projected tokens the LLM sees
``(B, mm_tokens_per_image, D_text)``.

Random configs initialise ``mm_input_projection_weight`` to zeros, which cuts the image off the LLM
(pixel gradients are exactly 0); the tiny builder initialises it from N(0, 0.2²).
"""

from __future__ import annotations

from typing import Any

import torch

from ..chat import turn_end_id
from ..hf import HFAdapter, ProjectorFeatures, TextBatch
from ..preprocessing import HALF, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import tiny_gemma_text, tiny_siglip_vision

GEMMA3_SPECIAL_TOKENS = {
    "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
    "start_of_turn_token": "<start_of_turn>", "end_of_turn_token": "<end_of_turn>",
}


@register_family("gemma3")
class Gemma3Adapter(ProjectorFeatures, HFAdapter):
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"
    display_name = "Gemma 3"
    llm = "Gemma 3"
    answer_prefix = ""  # the answer follows "model\n" directly
    notes = "single view, no pan-and-scan; Gemma 3 chat format; token_type_ids 1 = image tokens"
    # sliding-window layers: their cache keeps only the last window, and one 4-D mask would serve
    # both layer kinds, so choices are ranked one cache row each
    packed_choices = False

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=HALF, std=HALF, resample="bilinear")

    @property
    def end_id(self) -> int:
        return turn_end_id(self.tokenizer, "<end_of_turn>")

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        cfg = self.model.config
        image = [int(cfg.boi_token_id)] + [self.image_token_id] * int(cfg.mm_tokens_per_image) + [int(cfg.eoi_token_id)]
        return (self.bos() + self.text_ids("<start_of_turn>user\n\n\n") + image
                + self.text_ids(f"\n\n{prompt}<end_of_turn>\n<start_of_turn>model\n"))

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        if pixel_values is None:
            return {}
        return {"pixel_values": pixel_values, "token_type_ids": (batch.input_ids == self.image_token_id).long()}



def _init_gemma3(model: Any) -> None:
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.2)


@register_tiny("gemma3", special_tokens=GEMMA3_SPECIAL_TOKENS)
def tiny_gemma3(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> TinySpec:
    from transformers import Gemma3Config

    ids = tokenizer.convert_tokens_to_ids
    text = dict(tiny_gemma_text(tokenizer, hidden), sliding_window=256, query_pre_attn_scalar=hidden // 2)
    config = Gemma3Config(
        vision_config=tiny_siglip_vision(image_size, patch_size, hidden), text_config=text,
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=HALF, std=HALF, resample="bilinear")
    return TinySpec(config, "Gemma3ForConditionalGeneration", pre, "Gemma3ImageProcessor", init=_init_gemma3)
