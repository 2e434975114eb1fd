"""PaliGemma / PaliGemma 2 (``PaliGemmaForConditionalGeneration``).

Prompt format (what ``PaliGemmaProcessor`` builds; PaliGemma has no chat template)::

    <image>×N<bos>{prompt}\\n{answer}<eos>

``token_type_ids`` mark the **prefix** (image + prompt, 0: attends bidirectionally) and the
**suffix** (answer + EOS, 1: causal). Gemma 3 uses the same field the other way round (1 = image
tokens); see :mod:`tvprompt.models.families.gemma3`. Positions are 1-indexed as in the model's own forward
(``cumsum(mask)`` rather than ``cumsum(mask) - 1``).

The image is resized straight to the SigLIP tower's size (224/448/896) with bicubic and normalised
with mean = std = 0.5, as ``SiglipImageProcessor`` does. Features: ``encoder`` = SigLIP's last
hidden state ``(B, (S/patch)², D)``; ``projected`` = the linear projector's output the LLM sees.
"""

from __future__ import annotations

from typing import Any

import torch

from ..hf import HFAdapter, ProjectorFeatures, TextBatch
from ..preprocessing import HALF, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import sharpen_lm_head, tiny_gemma_text, tiny_siglip_vision


@register_family("paligemma")
class PaliGemmaAdapter(ProjectorFeatures, HFAdapter):
    model_types = ("paligemma",)
    model_class = "PaliGemmaForConditionalGeneration"
    display_name = "PaliGemma"
    llm = "Gemma, Gemma 2"
    answer_prefix = ""  # the answer follows the prompt's "\n" directly
    notes = "prompt format '<image>xN<bos>{prompt}\\n'; token_type_ids 0 = prefix, 1 = answer"

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=HALF, std=HALF, resample="bicubic")

    def num_image_tokens(self) -> int:
        vc = self.model.config.vision_config
        return (int(vc.image_size) // int(vc.patch_size)) ** 2

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        return [self.image_token_id] * self.num_image_tokens() + self.bos() + self.text_ids(f"{prompt}\n")

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        suffix = batch.target_mask if batch.target_mask is not None else torch.zeros_like(batch.input_ids)
        out: dict[str, Any] = {"token_type_ids": suffix.long()}
        if batch.position_ids is not None:
            out["position_ids"] = batch.position_ids + 1  # PaliGemma positions are 1-indexed
        if pixel_values is not None:
            out["pixel_values"] = pixel_values
        return out

    # Tokens after the cached prefix are suffix tokens: causal, which is what the model does for a
    # cached call without token_type_ids (and what a packed 4-D mask spells out).
    def continuation_positions(self, prefix: TextBatch, offsets: torch.Tensor) -> torch.Tensor | None:
        positions = super().continuation_positions(prefix, offsets)
        return None if positions is None else positions + 1  # PaliGemma positions are 1-indexed



@register_tiny("paligemma", special_tokens={"image_token": "<image>"})
def tiny_paligemma(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> TinySpec:
    from transformers import PaliGemmaConfig

    config = PaliGemmaConfig(
        vision_config=dict(tiny_siglip_vision(image_size, patch_size, hidden), projection_dim=hidden),
        text_config=dict(tiny_gemma_text(tokenizer, hidden), model_type="gemma"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projection_dim=hidden, hidden_size=hidden,
        vocab_size=len(tokenizer), tie_word_embeddings=False,
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=HALF, std=HALF, resample="bicubic")
    return TinySpec(config, "PaliGemmaForConditionalGeneration", pre, "SiglipImageProcessor", init=sharpen_lm_head)
