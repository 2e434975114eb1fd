"""Packed choice ranking: every choice after ONE copy of each image's cached prefix.

``HFAdapter.score_choices`` runs the image + prompt prefix once with a KV cache. Instead of copying
that cache once per choice, the token ids of all choices are put back to back after it (one row per
image, no padding between choices) with a 4-D additive attention mask in which each choice token
sees the prefix's real (non-padded) positions and the earlier tokens of its own choice only, and
position ids that restart at the prefix length for every choice. Each choice token then computes
exactly what it computes in a row of its own; the scores are gathered from the packed logits::

    prefix (cached)       | choice 0      | choice 1            | ...
    pad pad p0 p1 ... pP  | a0 a1 </s>    | b0 b1 b2 </s>       |
    positions             | L  L+1 L+2    | L  L+1 L+2 L+3      |   (L = real prefix length)

transformers 5.x passes a 4-D tensor mask through ``create_causal_mask`` unchanged (eager and SDPA
attention alike); caches with sliding-window layers are not packed (``is_full_attention_cache``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PackedChoices:
    """Token sequences laid back to back (all 1-D, on the CPU)."""

    ids: torch.Tensor  # (T,) token ids
    offsets: torch.Tensor  # (T,) index of each token inside its own sequence
    segment: torch.Tensor  # (T,) which sequence each token belongs to
    lengths: torch.Tensor  # (C,) tokens per sequence


def pack_choices(seqs: list[list[int]]) -> PackedChoices:
    """Lay ``seqs`` (non-empty token lists) back to back."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pack_choices: every sequence needs at least one token")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    segment = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    offsets = torch.arange(int(lengths.sum())) - starts[segment]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    return PackedChoices(ids, offsets, segment, lengths)


def packed_chunks(lengths: list[int], max_choices: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges of choices, each with at most ``max_choices`` choices and
    ``max_tokens`` tokens (a single longer choice gets a chunk of its own)."""
    chunks: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= max_choices or tokens + n > max_tokens):
            chunks.append((start, i))
            start, tokens = i, 0
        tokens += n
    chunks.append((start, len(lengths)))
    return chunks


def packed_attention_mask(prefix_mask: torch.Tensor, segment: torch.Tensor, offsets: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, P + T) additive mask: 0 where a packed token may attend, the dtype's min elsewhere.

    ``prefix_mask`` (B, P) marks the real prefix positions; token q attends to token k of the packed
    part when both belong to the same choice and k does not come after q.
    """
    batch_size, prefix_len = prefix_mask.shape
    n_tokens = segment.shape[0]
    own = (segment[:, None] == segment[None, :]) & (offsets[None, :] <= offsets[:, None])  # (T, T)
    allowed = torch.cat([prefix_mask.bool()[:, None, :].expand(batch_size, n_tokens, prefix_len),
                         own.to(prefix_mask.device).expand(batch_size, n_tokens, n_tokens)], dim=-1)
    mask = torch.zeros(batch_size, 1, n_tokens, prefix_len + n_tokens, dtype=dtype, device=prefix_mask.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def packed_scores(logits: torch.Tensor, first: torch.Tensor, packed: PackedChoices) -> torch.Tensor:
    """(B, C) mean log-probability of each packed choice.

    ``logits`` (B, T, V) come from the packed forward; ``first`` (B, V) are the log-probabilities the
    prefix's last position gives each choice's first token.
    """
    device = logits.device
    ids, segment = packed.ids.to(device), packed.segment.to(device)
    batch_size = logits.shape[0]
    src = torch.nonzero(packed.offsets[1:] > 0).squeeze(1).to(device)  # positions that predict a next token
    lp = logits[:, src].float().log_softmax(-1).gather(-1, ids[src + 1][None, :, None].expand(batch_size, -1, 1))
    starts = torch.nonzero(packed.offsets == 0).squeeze(1).to(device)
    total = first.to(device).gather(-1, ids[starts][None].expand(batch_size, -1))  # (B, C)
    total = total.index_add(1, segment[src + 1], lp.squeeze(-1))
    return total / packed.lengths.to(device)


def is_full_attention_cache(cache: Any) -> bool:
    """True for a ``DynamicCache`` whose layers all keep every position (no sliding window, no
    linear-attention state): appending packed tokens and cropping them off again is then exact."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover - transformers 4.x
        return False
    layers = getattr(cache, "layers", None)
    return isinstance(cache, DynamicCache) and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
