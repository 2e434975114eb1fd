"""Shared pieces of the tiny builders of the Qwen-VL, Idefics3/SmolVLM, PaliGemma and Gemma 3 families.

Random tiny models need two fixes to be worth testing: a sharper LM head (see ``sharpen_lm_head``)
and, for Gemma 3, a non-zero ``mm_input_projection_weight`` (done in its own builder).
"""

from __future__ import annotations

from typing import Any

from .tiny import init_normal_


def sharpen_lm_head(model: Any) -> None:
    """A 0.02-std head over a 32-wide state gives near-uniform logits (loss = log V) that no image can
    move; a 0.3-std head makes the answer loss respond to the prompt, as it does in a trained model."""
    init_normal_(model.lm_head, std=0.3)


def tiny_siglip_vision(image_size: int, patch_size: int, hidden: int) -> dict[str, Any]:
    return dict(model_type="siglip_vision_model", hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size)


def tiny_gemma_text(tokenizer: Any, hidden: int) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
