"""InstructBLIP (``InstructBlipForConditionalGeneration``) with a Vicuna/LLaMA or Flan-T5 LLM.

As BLIP-2, plus the instruction goes to the Q-Former too: ``qformer_input_ids`` come from the
Q-Former's own (BERT) tokenizer, which ``InstructBlipProcessor`` keeps in the checkpoint's
``qformer_tokenizer/`` folder (the LLM tokenizer is used, with a warning, when that is missing).
No chat template: the prompt goes in as given. ``projected`` features depend on the instruction:
``lm_loss_with_features`` gives them for the batch's prompts, ``vision_features`` for the prompts
it is given (an empty instruction when none), so that an FCA reference sees the same instruction.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..hf import TextBatch, pad_sequences
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, build_tokenizer, register_tiny
from .blip2 import QFormerAdapter, init_tiny_qformer_model, tiny_blip_vision, tiny_text_config

log = logging.getLogger(__name__)

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


@register_family("instructblip")
class InstructBlipAdapter(QFormerAdapter):
    model_types = ("instructblip",)
    model_class = "InstructBlipForConditionalGeneration"
    display_name = "InstructBLIP"
    llm = "Vicuna/LLaMA, Flan-T5"
    prompt_dependent_features = ("projected",)
    notes = "prompt used as given; also fed to the Q-Former"

    def setup(self, source: str) -> None:
        super().setup(source)
        from transformers import AutoTokenizer

        try:
            self.qformer_tokenizer = AutoTokenizer.from_pretrained(source, subfolder=QFORMER_TOKENIZER_DIR)
        except (OSError, ValueError):
            log.warning("%s: no %s/ folder; using the LLM tokenizer for the Q-Former", source, QFORMER_TOKENIZER_DIR)
            self.qformer_tokenizer = self.tokenizer

    def qformer_inputs(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.qformer_tokenizer
        seqs = [list(tok(p).input_ids) or [tok.pad_token_id or 0] for p in prompts]
        ids, mask = pad_sequences(seqs, tok.pad_token_id or 0, "right")
        for i, p in enumerate(prompts):
            if not tok(p).input_ids:  # empty instruction: one masked pad token
                mask[i] = 0
        return {"qformer_input_ids": ids.to(self.device), "qformer_attention_mask": mask.to(self.device)}

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        if pixel_values is None:
            return {}
        assert batch.prompts is not None
        return {"pixel_values": pixel_values, **self.qformer_inputs(batch.prompts)}

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int],
                   prompts: list[str] | None = None) -> Any:
        q = self.qformer_inputs(list(prompts) if prompts is not None else [""] * pixel_values.shape[0])
        return self.model.get_image_features(pixel_values, return_dict=True, **q)


@register_tiny("instructblip", special_tokens={"image_token": "<image>"},
               variants={"llama": {"llm": "llama"}, "t5": {"llm": "t5"}})
def tiny_instructblip(tokenizer: Any, llm: str = "llama", image_size: int = 32, patch_size: int = 8,
                      hidden: int = 32, num_query_tokens: int = 4) -> TinySpec:
    from transformers import InstructBlipConfig

    config = InstructBlipConfig(
        text_config=tiny_text_config(tokenizer, llm, hidden).to_dict(), num_query_tokens=num_query_tokens,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **tiny_blip_vision(image_size, patch_size, hidden),
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    qformer_tokenizer = build_tokenizer()

    def save_qformer_tokenizer(directory: Any) -> None:
        qformer_tokenizer.save_pretrained(directory / QFORMER_TOKENIZER_DIR)

    return TinySpec(config, "InstructBlipForConditionalGeneration", pre, "BlipImageProcessor",
                    init=init_tiny_qformer_model, save_extra=save_qformer_tokenizer)
