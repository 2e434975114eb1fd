"""BLIVA (Vicuna-7B v0): InstructBLIP + the ViT's patch features projected into the LLM input.

Sequence (BLIVA ``forward``)::

    [32 query tokens][256 patch tokens]</s>{prompt}{answer}</s>

BLIVA's LLM tokenizer uses ``</s>`` as BOS, EOS and UNK (``tvp convert bliva`` writes it that
way); the Q-Former also reads the prompt, with a BERT tokenizer kept in ``qformer_tokenizer/``.
Features: ``encoder`` = ``ln_vision(ViT(x))``; ``projected`` = the 32 + 256 tokens the LLM sees.
As for InstructBLIP, the 32 query tokens depend on the instruction: ``lm_loss_with_features``
gives them for the batch's prompts, ``vision_features`` for the prompts it is given (default empty).
"""

from __future__ import annotations

from typing import Any

import torch

from ..families.instructblip import QFORMER_TOKENIZER_DIR, InstructBlipAdapter
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from .minigpt4 import init_composed, tiny_blip_parts

QFORMER_MAX_LENGTH = 128  # BLIVA max_txt_len


@register_family("bliva")
class BlivaAdapter(InstructBlipAdapter):
    model_types = ("bliva",)
    model_class = "tvprompt.models.paper.arch:BlivaForConditionalGeneration"
    display_name = "BLIVA"
    llm = "Vicuna-7B v0 (LLaMA)"
    notes = "converted with 'tvp convert bliva'; InstructBLIP + patch tokens; prompt = the raw instruction"
    answer_prefix = ""  # LLaMA's SentencePiece adds its own word-start marker

    def qformer_inputs(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """BLIVA's Q-Former text: BERT ``[CLS] prompt [SEP]``, right-padded, cut from the left at 128 tokens."""
        tok = self.qformer_tokenizer
        tok.truncation_side = "left"
        enc = tok(prompts, padding="longest", truncation=True, max_length=QFORMER_MAX_LENGTH, return_tensors="pt")
        return {"qformer_input_ids": enc.input_ids.to(self.device),
                "qformer_attention_mask": enc.attention_mask.to(self.device)}

    def num_image_tokens(self) -> int:
        return int(self.model.config.num_image_tokens)

    def prompt_ids(self, prompt: str, image_size: tuple[int, int] | None = None) -> list[int]:
        text = str(self.model.config.prompt_template).replace("{}", prompt)
        return [int(self.model.config.image_token_index)] * self.num_image_tokens() + self.bos() + self.text_ids(text)

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        vision = image_outputs.vision_outputs
        if kind == "encoder":
            return vision.last_hidden_state
        model = self.model
        queries = image_outputs.qformer_outputs.last_hidden_state[:, : self.num_query_tokens]
        patches = vision.hidden_states[model.config.vision_feature_layer][:, 1:]
        proj = model.language_projection
        return torch.cat([proj(queries.to(proj.weight.dtype)), model.vision_project(patches)], dim=1)


@register_tiny("bliva")
def tiny_bliva(tokenizer: Any, image_size: int = 28, hidden: int = 32) -> TinySpec:
    """Tiny BLIVA; the Q-Former reuses the tiny LLM tokenizer (saved again as ``qformer_tokenizer/``)."""
    from ..families.llava import tiny_llama
    from .arch import BlivaConfig

    vision, qformer = tiny_blip_parts(image_size, 14, hidden, text_vocab=len(tokenizer))
    config = BlivaConfig(vision_config=vision, qformer_config=qformer,
                         text_config=tiny_llama(tokenizer, hidden).to_dict(),
                         num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<unk>"))
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, BlivaAdapter.model_class, pre, "BlipImageProcessor", init=init_composed,
                    save_extra=lambda d: tokenizer.save_pretrained(d / QFORMER_TOKENIZER_DIR))
