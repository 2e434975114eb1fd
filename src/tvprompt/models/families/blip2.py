"""BLIP-2 (``Blip2ForConditionalGeneration``) with an OPT (decoder-only) or Flan-T5 (encoder-decoder) LLM.

Text side, as ``Blip2Processor`` builds it: ``num_query_tokens`` image tokens, then the prompt
tokenized with the LLM tokenizer's special tokens (BOS before it for OPT, EOS after it for T5).
BLIP-2 has no chat template: the prompt goes in as given, so task templates such as
``Question: {q} Answer:`` belong to the task spec. Features: ``encoder`` = the ViT output the
Q-Former cross-attends to (B, 1 + patches, D); ``projected`` = the query outputs after the language
projection, the tokens the LLM sees (B, num_query_tokens, D_llm).
"""

from __future__ import annotations

from typing import Any

import torch

from ..hf import EncoderState, HFAdapter, TextBatch
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, init_responsive_, register_tiny


class QFormerAdapter(HFAdapter):
    """Shared by BLIP-2 and InstructBLIP: ViT -> Q-Former -> projection -> OPT/LLaMA or T5."""

    answer_prefix = " "

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")

    def setup(self, source: str) -> None:
        if self.is_encoder_decoder:  # T5: no BOS, prompts end with EOS, answers start without a space
            self.add_bos = False
            self.answer_prefix = ""

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        ids = [int(self.model.config.image_token_id)] * self.num_query_tokens + self.bos() + self.text_ids(prompt)
        if self.is_encoder_decoder:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def image_outputs(self, outputs: Any) -> Any:
        return outputs  # holds vision_outputs and qformer_outputs

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        if kind == "encoder":
            return image_outputs.vision_outputs.last_hidden_state
        query = image_outputs.qformer_outputs.last_hidden_state[:, : self.num_query_tokens]
        projection = self.model.language_projection
        return projection(query.to(projection.weight.dtype))

    def continuation_module(self) -> Any:
        return self.model.language_model

    def cache_of(self, outputs: Any) -> Any:
        return super().cache_of(outputs.language_model_outputs)

    def encode(self, pixel_values: torch.Tensor, batch: TextBatch) -> EncoderState:
        start = torch.full((batch.input_ids.shape[0], 1), self._decoder_start_id(), dtype=torch.long,
                           device=self.device)
        out = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=start,
            **self.forward_kwargs(pixel_values, batch),
        )
        return EncoderState(out.language_model_outputs.encoder_last_hidden_state, batch.attention_mask, out)

    def decode(self, state: EncoderState, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model.language_model(
            encoder_outputs=(state.hidden,), attention_mask=state.mask,
            decoder_input_ids=ids, decoder_attention_mask=mask,
        )
        return out.logits


@register_family("blip2")
class Blip2Adapter(QFormerAdapter):
    model_types = ("blip-2",)
    model_class = "Blip2ForConditionalGeneration"
    display_name = "BLIP-2"
    llm = "OPT, Flan-T5"
    notes = "prompt used as given (no chat template)"

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        return self.model.get_image_features(pixel_values, return_dict=True)


def tiny_blip_vision(image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> dict[str, Any]:
    """Vision and Q-Former config dicts; initializer_range fixed (the BLIP-2 default is 1e-10)."""
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size, initializer_range=0.02)
    qformer = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                   encoder_hidden_size=hidden, cross_attention_frequency=1, vocab_size=512, max_position_embeddings=128)
    return {"vision_config": vision, "qformer_config": qformer}


def tiny_text_config(tokenizer: Any, llm: str, hidden: int = 32) -> Any:
    """A tiny OPT, LLaMA or T5 text config using ``tokenizer``'s ids."""
    from transformers import LlamaConfig, OPTConfig, T5Config

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if llm == "opt":
        return OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, word_embed_proj_dim=hidden, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False, **ids)
    if llm == "llama":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                           max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                           tie_word_embeddings=False, **ids)
    if llm == "t5":
        return T5Config(vocab_size=len(tokenizer), d_model=hidden, d_kv=hidden // 2, d_ff=2 * hidden, num_layers=2,
                        num_decoder_layers=2, num_heads=2, decoder_start_token_id=tokenizer.pad_token_id,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False, **ids)
    raise ValueError(f"llm must be opt, llama or t5, got {llm!r}")


def init_tiny_qformer_model(model: Any) -> None:
    """Make a random BLIP-2/InstructBLIP respond to its image.

    transformers starts ``query_tokens`` at exactly 0 (and the vision ``initializer_range`` at 1e-10,
    fixed in the config), so: std 0.1 everywhere (``init_responsive_``) and unit-scale query tokens.
    """
    init_responsive_(model)
    torch.nn.init.normal_(model.query_tokens, std=0.5)


@register_tiny("blip2", special_tokens={"image_token": "<image>"},
               variants={"opt": {"llm": "opt"}, "t5": {"llm": "t5"}})
def tiny_blip2(tokenizer: Any, llm: str = "opt", image_size: int = 32, patch_size: int = 8, hidden: int = 32,
               num_query_tokens: int = 4) -> TinySpec:
    from transformers import Blip2Config

    config = Blip2Config(
        text_config=tiny_text_config(tokenizer, llm, hidden).to_dict(), num_query_tokens=num_query_tokens,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **tiny_blip_vision(image_size, patch_size, hidden),
    )
    pre = ImagePreprocessing(size=(image_size, image_size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    return TinySpec(config, "Blip2ForConditionalGeneration", pre, "BlipImageProcessor", init=init_tiny_qformer_model)
