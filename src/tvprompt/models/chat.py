"""Small helpers shared by the chat-format families (Qwen-VL, Idefics3/SmolVLM, Gemma 3)."""

from __future__ import annotations

from typing import Any


def turn_end_id(tokenizer: Any, token: str) -> int:
    """Id of the chat format's end-of-turn ``token`` when the tokenizer has it as one token, else EOS.

    An instruction-tuned chat model ends its answer with the end-of-turn token, not with EOS, so
    that is what ``lm_loss`` / ``score_choices`` score after the answer and what stops ``generate``.
    """
    tid = tokenizer.convert_tokens_to_ids(token)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return tid
    return int(tokenizer.eos_token_id)
