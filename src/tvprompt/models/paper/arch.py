"""MiniGPT-4, VPGTrans and BLIVA as compositions of transformers modules (no research code).

- **MiniGPT-4** and **VPGTrans**: BLIP-2's EVA ViT-g + Q-Former (32 queries, no text input), one
  linear projection (``llama_proj``) and a LLaMA/Vicuna ``LlamaForCausalLM``. That is exactly
  ``Blip2ForConditionalGeneration`` with a Llama language model; the subclasses add only their own
  ``model_type`` (so the registry picks the right prompt format), the prompt template, the end
  symbol and LAVIS's ``ln_vision`` epsilon (1e-5, where transformers' BLIP-2 uses 1e-6 everywhere).
- **BLIVA**: ``InstructBlipForConditionalGeneration`` (instruction-aware Q-Former) plus
  ``vision_project``, a linear map of the ViT's patch features (penultimate block, CLS dropped)
  into the LLM input, placed right after the 32 query tokens.

The image enters the LLM where ``image_token_index`` sits in ``input_ids`` (transformers'
placeholder mechanism): ``num_query_tokens`` placeholders for MiniGPT-4/VPGTrans,
``num_query_tokens + num_patches`` for BLIVA. Converted checkpoints use the LLaMA ``<unk>`` id,
which SentencePiece with byte fallback never produces from text, so the vocabulary (and every
log-likelihood) stays that of the released model.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    Blip2Config,
    Blip2ForConditionalGeneration,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
)
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs

MINIGPT4_TEMPLATE = "###Human: <Img><ImageHere></Img> {} ###Assistant: "
IMAGE_SLOT = "<ImageHere>"  # where the image goes in a template
LAVIS_LN_VISION_EPS = 1e-5  # LAVIS `ln_vision` is a plain nn.LayerNorm


class MiniGPT4Config(Blip2Config):
    """``Blip2Config`` + MiniGPT-4's conversation format. ``{}`` in the template is the instruction."""

    model_type = "minigpt4"
    prompt_template: str = MINIGPT4_TEMPLATE
    end_sym: str = "###"  # what ends an answer (the training targets end with it, not with EOS)
    vision_post_layernorm_eps: float = LAVIS_LN_VISION_EPS


class VPGTransConfig(MiniGPT4Config):
    """VPGTrans (VL-Vicuna): the MiniGPT-4 composition with its own checkpoint and ``###`` format."""

    model_type = "vpgtrans"


class MiniGPT4ForConditionalGeneration(Blip2ForConditionalGeneration):
    config_class = MiniGPT4Config

    def __init__(self, config: MiniGPT4Config) -> None:
        super().__init__(config)
        self.vision_model.post_layernorm.eps = config.vision_post_layernorm_eps


class VPGTransForConditionalGeneration(MiniGPT4ForConditionalGeneration):
    config_class = VPGTransConfig


class BlivaConfig(InstructBlipConfig):
    """``InstructBlipConfig`` + BLIVA's patch branch (features of ViT block ``vision_feature_layer``)."""

    model_type = "bliva"
    prompt_template: str = "{}"
    vision_feature_layer: int = -2  # hidden_states index: the penultimate ViT block's output
    vision_post_layernorm_eps: float = LAVIS_LN_VISION_EPS

    @property
    def num_patches(self) -> int:
        size, patch = self.vision_config.image_size, self.vision_config.patch_size
        return (size // patch) ** 2

    @property
    def num_image_tokens(self) -> int:
        return self.num_query_tokens + self.num_patches


class BlivaForConditionalGeneration(InstructBlipForConditionalGeneration):
    """InstructBLIP whose image tokens are ``[llm_proj(queries), vision_project(patches)]``."""

    config_class = BlivaConfig

    def __init__(self, config: BlivaConfig) -> None:
        super().__init__(config)
        self.vision_model.post_layernorm.eps = config.vision_post_layernorm_eps
        self.vision_project = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs,
    ) -> BaseModelOutputWithVisionQformerOutputs:
        vision = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=True,
            return_dict=True,
        )
        image_embeds = vision.last_hidden_state  # ln_vision(ViT(x))
        patches = vision.hidden_states[self.config.vision_feature_layer][:, 1:]
        queries, qformer_out = self.project_queries(image_embeds, qformer_input_ids, qformer_attention_mask)
        tokens = torch.cat([queries, self.vision_project(patches)], dim=1)
        return BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=image_embeds,
            pooler_output=tokens,
            hidden_states=vision.hidden_states,
            vision_outputs=vision,
            qformer_outputs=qformer_out,
        )

    def project_queries(
        self, image_embeds: torch.Tensor, qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """``llm_proj(Q-Former(queries + instruction | image_embeds))`` for the query positions."""
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=image_embeds.device)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        qformer_out = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=torch.cat([query_mask, qformer_attention_mask.to(query_mask.device)], dim=1),
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        )
        queries = qformer_out.last_hidden_state[:, : query_tokens.shape[1]].to(image_embeds.dtype)
        return self.language_projection(queries), qformer_out

    @torch.no_grad()
    def generate(self, *args, **kwargs):  # transformers' default would insert 32 placeholders, not 32 + patches
        if kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is None:
            raise ValueError("BLIVA generate needs input_ids holding num_image_tokens image placeholders")
        return super().generate(*args, **kwargs)


def register_auto_classes() -> None:
    """Make ``AutoConfig`` know the three model types (idempotent)."""
    for config_cls in (MiniGPT4Config, VPGTransConfig, BlivaConfig):
        with contextlib.suppress(ValueError):  # already registered by another import path
            AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)


MODEL_CLASSES: dict[str, type] = {
    "minigpt4": MiniGPT4ForConditionalGeneration,
    "vpgtrans": VPGTransForConditionalGeneration,
    "bliva": BlivaForConditionalGeneration,
}

register_auto_classes()
