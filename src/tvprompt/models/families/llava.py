"""LLaVA-1.5 (``LlavaForConditionalGeneration``): the reference family.

Prompt format (LLaVA-1.5's conversation template, what its chat template renders)::

    <s>USER: <image>\\n{prompt} ASSISTANT: {answer}</s>

``<image>`` expands to one image token per vision feature (576 for CLIP ViT-L/14-336). Features:
``encoder`` = the vision-tower hidden state the projector reads (``vision_feature_layer``, CLS
dropped for the ``default`` strategy), ``projected`` = the projector output the LLM sees. Both are
captured with a forward hook on the projector during the forward that computes the LM loss.
"""

from __future__ import annotations

from typing import Any

import torch

from ..hf import HFAdapter, TextBatch, capture_io
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, init_responsive_, register_tiny

PROMPT_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"


class LlavaStyleAdapter(HFAdapter):
    """Shared by LLaVA-1.5 and LLaVA-NeXT: CLIP-like tower, projector, image tokens in the text."""

    prompt_format: str = PROMPT_FORMAT

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                                  shortest_edge=size)

    def num_image_tokens(self, image_size: tuple[int, int]) -> int:
        vc = self.model.config.vision_config
        n = (int(vc.image_size) // int(vc.patch_size)) ** 2
        return n + (1 if self.model.config.vision_feature_select_strategy == "full" else 0)

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        before, after = self.prompt_format.format(prompt=prompt).split("<image>", 1)
        image = [self.image_token_id] * self.num_image_tokens(image_size)
        return self.bos() + self.text_ids(before) + image + self.text_ids(after)

    def capture_vision(self, batch: TextBatch) -> Any:
        return capture_io(self.model.model.multi_modal_projector, batch.input_ids.shape[0])

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        with capture_io(self.model.model.multi_modal_projector, pixel_values.shape[0]) as box:
            self.model.model.get_image_features(**self.forward_kwargs(pixel_values, self._vision_batch(image_size)))
        return box

    def _vision_batch(self, image_size: tuple[int, int]) -> TextBatch:
        empty = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        return TextBatch(empty, empty, image_size=image_size)

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        """The projector's input (``encoder``) or output (``projected``), as (B, N, D)."""
        feats = image_outputs.input if kind == "encoder" else image_outputs.output
        return feats.reshape(image_outputs.batch_size, -1, feats.shape[-1])


@register_family("llava")
class LlavaAdapter(LlavaStyleAdapter):
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    display_name = "LLaVA-1.5"
    llm = "Vicuna/LLaMA"
    notes = "conversation format: USER: <image> {prompt} ASSISTANT:"


def tiny_clip_vision(image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, projection_dim=hidden,
    )


def tiny_llama(tokenizer: Any, hidden: int = 32) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


@register_tiny("llava", special_tokens={"image_token": "<image>"})
def tiny_llava(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> TinySpec:
    from transformers import LlavaConfig

    config = LlavaConfig(
        vision_config=tiny_clip_vision(image_size, patch_size, hidden),
        text_config=tiny_llama(tokenizer, hidden),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                             shortest_edge=image_size)
    return TinySpec(config, "LlavaForConditionalGeneration", pre, "CLIPImageProcessor", init=init_responsive_)
