"""SmolVLM (``SmolVLMForConditionalGeneration``): Idefics3's adapter, no image splitting.

SmolVLM shares Idefics3's architecture, processor behaviour and prompt layout; its tokenizer's BOS
is ``<|im_start|>``, so the prompt renders as the SmolVLM chat template does::

    <|im_start|>User:<fake_token_around_image><global-img><image>×N<fake_token_around_image>{prompt}<end_of_utterance>
    \\nAssistant: {answer}<end_of_utterance>

(one line, wrapped here at the ``\\n``)

See :mod:`tvprompt.models.families.idefics3` for the single-view (no splitting) limit and parity notes.
"""

from __future__ import annotations

from typing import Any

from ..preprocessing import HALF, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import sharpen_lm_head
from .idefics3 import (
    IDEFICS3_SPECIAL_TOKENS,
    Idefics3Adapter,
    tiny_idefics3_config,
    tiny_idefics3_processor,
)


@register_family("smolvlm")
class SmolVLMAdapter(Idefics3Adapter):
    model_types = ("smolvlm",)
    model_class = "SmolVLMForConditionalGeneration"
    display_name = "SmolVLM"
    llm = "SmolLM2"


@register_tiny("smolvlm", special_tokens=IDEFICS3_SPECIAL_TOKENS)
def tiny_smolvlm(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> TinySpec:
    from transformers import SmolVLMConfig

    config = tiny_idefics3_config(SmolVLMConfig, tokenizer, image_size, patch_size, hidden)
    pre = ImagePreprocessing(size=(image_size, image_size), mean=HALF, std=HALF, resample="bicubic")
    return TinySpec(config, "SmolVLMForConditionalGeneration", pre, "SmolVLMImageProcessor",
                    processor_extra=tiny_idefics3_processor(image_size), init=sharpen_lm_head)
