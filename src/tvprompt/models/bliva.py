"""BLIVA (Vicuna-7B): InstructBLIP + the ViT's patch features projected into the LLM input.

Sequence (BLIVA ``forward``)::

    [32 query tokens][256 patch tokens]</s>{prompt}{answer}</s>

BLIVA's LLM tokenizer uses ``</s>`` as BOS, EOS and UNK (``tvp convert bliva`` writes it that
way); the Q-Former also reads the prompt, with a BERT tokenizer kept in ``qformer_tokenizer/``.
Features: ``encoder`` = ``ln_vision(ViT(x))``; ``projected`` = the 32 + 256 tokens the LLM sees
*under an empty instruction* (the query tokens depend on the instruction; FCA needs features of
the image alone, identical from ``vision_features`` and ``lm_loss_with_features``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import TvpError
from .minigpt4 import SplicedImageAdapter, init_composed, tiny_blip_parts
from .preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from .registry import register_family
from .tiny import TinySpec, register_tiny

QFORMER_MAX_LENGTH = 128  # BLIVA max_txt_len


@register_family("bliva")
class BlivaAdapter(SplicedImageAdapter):
    model_types = ("bliva",)
    model_class = "tvprompt.models.paper_arch:BlivaForConditionalGeneration"
    display_name = "BLIVA"
    notes = "converted with 'tvp convert bliva'; InstructBLIP + patch tokens; prompt = the raw instruction"

    qformer_tokenizer: Any = None
    _qformer_prompts: list[str] | None = None

    def setup(self, source: str) -> None:
        from transformers import AutoTokenizer

        try:
            self.qformer_tokenizer = AutoTokenizer.from_pretrained(source, subfolder="qformer_tokenizer",
                                                                   truncation_side="left")
        except (OSError, ValueError) as e:
            raise TvpError(f"{source}: no Q-Former tokenizer in qformer_tokenizer/ ({e}); "
                           "convert the checkpoint with 'tvp convert bliva'") from None

    def num_image_tokens(self) -> int:
        return int(self.model.config.num_image_tokens)

    def prompt_ids(self, prompt: str, image_size: tuple[int, int] | None = None) -> list[int]:
        text = str(self.model.config.prompt_template).replace("{}", prompt)
        return [self.image_token_id] * self.num_image_tokens() + self.bos() + self.text_ids(text)

    @contextlib.contextmanager
    def _instructions(self, prompts: list[str]) -> Iterator[None]:
        """The Q-Former reads the same instruction as the LLM for the duration of one call."""
        self._qformer_prompts = list(prompts)
        try:
            yield
        finally:
            self._qformer_prompts = None

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int] | None = None) -> Any:
        prompts = self._qformer_prompts or [""] * pixel_values.shape[0]
        if len(prompts) != pixel_values.shape[0]:
            raise TvpError(f"BLIVA: {len(prompts)} instructions for {pixel_values.shape[0]} images")
        text = self.qformer_tokenizer(prompts, padding="longest", truncation=True, max_length=QFORMER_MAX_LENGTH,
                                      return_tensors="pt")
        return self.model.get_image_features(
            pixel_values, qformer_input_ids=text.input_ids.to(self.device),
            qformer_attention_mask=text.attention_mask.to(self.device),
        )

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        """``projected`` is taken under the empty instruction, so it is a function of the image alone.

        FCA compares prompted and reference features sample by sample; the reference has no
        instruction, so the Q-Former is re-run (cheap: the ViT output is reused) with an empty one.
        """
        if kind != "projected":
            return image_outputs.last_hidden_state
        embeds = image_outputs.last_hidden_state
        text = self.qformer_tokenizer([""] * embeds.shape[0], return_tensors="pt")
        queries, _ = self.model.project_queries(embeds, text.input_ids.to(self.device),
                                                text.attention_mask.to(self.device))
        return torch.cat([queries, image_outputs.pooler_output[:, queries.shape[1] :]], dim=1)

    def lm_loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str]) -> torch.Tensor:
        with self._instructions(prompts):
            return super().lm_loss(pixels01, prompts, answers)

    def lm_loss_with_features(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str],
                              kind: str = "encoder") -> tuple[torch.Tensor, torch.Tensor]:
        with self._instructions(prompts):
            return super().lm_loss_with_features(pixels01, prompts, answers, kind)

    def score_choices(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        with self._instructions(prompts):
            return super().score_choices(pixels01, prompts, choices)

    def generate(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        with self._instructions(prompts):
            return super().generate(pixels01, prompts, max_new_tokens)


@register_tiny("bliva")
def tiny_bliva(tokenizer: Any, image_size: int = 28, hidden: int = 32) -> TinySpec:
    """Tiny BLIVA; the Q-Former reuses the tiny LLM tokenizer (saved again as ``qformer_tokenizer/``)."""
    from .llava import tiny_llama
    from .paper_arch import BlivaConfig

    vision, qformer = tiny_blip_parts(image_size, 14, hidden, text_vocab=len(tokenizer))
    config = BlivaConfig(vision_config=vision, qformer_config=qformer, text_config=tiny_llama(tokenizer, hidden).to_dict(),
                         num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<unk>"))
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, BlivaAdapter.model_class, pre, "BlipImageProcessor", init=init_composed,
                    save_extra=lambda d: tokenizer.save_pretrained(d / "qformer_tokenizer"))
