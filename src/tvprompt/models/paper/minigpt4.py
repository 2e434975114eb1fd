"""MiniGPT-4 and VPGTrans: BLIP-2 ViT-g + Q-Former + ``llama_proj`` + Vicuna (see ``paper_arch``).

Prompt format (MiniGPT-4's stage-2 / demo template; VPGTrans uses the same)::

    <s>###Human: <Img>[32 image tokens]</Img> {prompt} ###Assistant: {answer}###

The answer is followed by the end symbol ``###`` instead of EOS, as in MiniGPT-4's training
targets (``text + end_sym``), so ``lm_loss`` and ``score_choices`` use ``answer + "###"`` and
``generate`` cuts at the first ``###``. ``use_template("released")`` switches to the released TVP
code's classification wrapping instead: ``<s><Img>[image]</Img>`` and the instruction, each
tokenised apart, with the answer + ``###`` as the training target and choices ranked *without*
``###``. Checkpoints come from ``tvp convert minigpt4|vpgtrans``
(released files) or from the tiny builders below. Features: ``encoder`` = ``ln_vision(ViT(x))``
(the Q-Former's cross-attention input, 257 tokens for ViT-g), ``projected`` = the 32 tokens the LLM sees.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import UsageError
from ..families.blip2 import Blip2Adapter
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, init_normal_, register_tiny

IMAGE_SLOT = "<ImageHere>"


class MiniGPT4StyleAdapter(Blip2Adapter):
    """``<s>###Human: <Img><ImageHere></Img> {prompt} ###Assistant: `` + answer + ``###``."""

    answer_prefix = ""  # LLaMA's SentencePiece adds its own word-start marker
    TEMPLATES = ("chat", "released")
    template = "chat"

    def use_template(self, name: str) -> None:
        """``chat`` (the stage-2 template above) or ``released`` (the released TVP code's ranking prompt)."""
        if name not in self.TEMPLATES:
            raise UsageError(f"{self.model_id}: template {name!r} is not one of {', '.join(self.TEMPLATES)}")
        if name != self.template:
            self.template = name
            self._token_cache.clear()

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_index)

    def num_image_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def template_ids(self, template: str, prompt: str) -> list[int]:
        """BOS + ``template`` with ``{}`` -> prompt and ``<ImageHere>`` -> the image slots (tokenised apart)."""
        before, after = template.split(IMAGE_SLOT, 1) if IMAGE_SLOT in template else ("", template)
        image = [self.image_token_id] * self.num_image_tokens()
        return (self.bos() + self.text_ids(before.replace("{}", prompt)) + image
                + self.text_ids(after.replace("{}", prompt)))

    @property
    def end_sym(self) -> str:
        return str(self.model.config.end_sym)

    def prompt_ids(self, prompt: str, image_size: tuple[int, int] | None = None) -> list[int]:
        if self.template == "released":
            image = [self.image_token_id] * self.num_image_tokens()
            return self.bos() + self.text_ids("<Img>") + image + self.text_ids("</Img>") + self.text_ids(prompt)
        return self.template_ids(str(self.model.config.prompt_template), prompt)

    def choice_ids(self, choice: str) -> list[int]:
        if self.template == "released":  # the released ranking scores the class name alone
            return self.text_ids(choice)
        return super().choice_ids(choice)

    def answer_ids(self, answer: str) -> list[int]:
        return self.text_ids(self.answer_prefix + answer + self.end_sym)

    def generate(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        texts = super().generate(pixels01, prompts, max_new_tokens)
        return [t.split(self.end_sym, 1)[0].strip() for t in texts]


@register_family("minigpt4")
class MiniGPT4Adapter(MiniGPT4StyleAdapter):
    model_types = ("minigpt4",)
    model_class = "tvprompt.models.paper.arch:MiniGPT4ForConditionalGeneration"
    display_name = "MiniGPT-4"
    llm = "Vicuna v0 (LLaMA)"
    notes = ("converted with 'tvp convert minigpt4'; "
             "prompt '###Human: <Img>…</Img> {prompt} ###Assistant: ', ends with ###")


@register_family("vpgtrans")
class VPGTransAdapter(MiniGPT4StyleAdapter):
    model_types = ("vpgtrans",)
    model_class = "tvprompt.models.paper.arch:VPGTransForConditionalGeneration"
    display_name = "VPGTrans"
    llm = "Vicuna v0 (LLaMA)"
    notes = "converted with 'tvp convert vpgtrans'; MiniGPT-4's ### prompt format"


# ---- tiny stand-ins ---------------------------------------------------------------------------
def tiny_blip_parts(image_size: int = 28, patch_size: int = 14, hidden: int = 32,
                    text_vocab: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vision_config, qformer_config) dicts of a tiny ViT + Q-Former (BLIP-2 shapes, tiny widths)."""
    vision = dict(hidden_size=hidden, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch_size, initializer_range=0.02)
    qformer: dict[str, Any] = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                                   cross_attention_frequency=1, encoder_hidden_size=hidden)
    if text_vocab is not None:
        qformer.update(vocab_size=text_vocab, max_position_embeddings=128)
    return vision, qformer


def init_composed(model: Any) -> None:
    """Random-but-useful weights: N(0, 0.02) everywhere (BLIP-2's ViT default is 1e-10) + varied queries."""
    init_normal_(model)
    init_normal_(model.qformer, std=0.2)  # cross-attention strong enough that the queries see the image
    torch.nn.init.normal_(model.query_tokens, std=0.5)
    init_normal_(model.language_model, std=0.15)  # a tiny LLM whose logits are not all ~0
    for name, module in model.named_modules():  # image tokens as strong as the text embeddings
        if name in ("language_projection", "vision_project"):
            torch.nn.init.normal_(module.weight, std=0.3)


def _tiny(tokenizer: Any, config_cls: type, model_class: str, image_size: int, hidden: int) -> TinySpec:
    from ..families.llava import tiny_llama

    vision, qformer = tiny_blip_parts(image_size, 14, hidden)
    config = config_cls(vision_config=vision, qformer_config=qformer,
                        text_config=tiny_llama(tokenizer, hidden).to_dict(),
                        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<unk>"))
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, model_class, pre, "BlipImageProcessor", init=init_composed)


@register_tiny("minigpt4")
def tiny_minigpt4(tokenizer: Any, image_size: int = 28, hidden: int = 32) -> TinySpec:
    from .arch import MiniGPT4Config

    return _tiny(tokenizer, MiniGPT4Config, MiniGPT4Adapter.model_class, image_size, hidden)


@register_tiny("vpgtrans")
def tiny_vpgtrans(tokenizer: Any, image_size: int = 28, hidden: int = 32) -> TinySpec:
    from .arch import VPGTransConfig

    return _tiny(tokenizer, VPGTransConfig, VPGTransAdapter.model_class, image_size, hidden)
