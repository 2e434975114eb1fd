"""Packed choice ranking (``tvprompt.models.ranking``): all choices after one copy of each image's
cached prefix give the scores of one cache row per (image, choice) and of one full forward per
(image, choice), for every decoder-only family, with eager and SDPA attention, in fp32 and bf16,
left-padded prompts of different lengths, choices of different token lengths, and in chunks."""

from __future__ import annotations

import pytest
import torch

from tvprompt.models.ranking import (
    is_full_attention_cache,
    pack_choices,
    packed_attention_mask,
    packed_chunks,
    packed_scores,
)
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model, tiny_variants

PROMPTS = ["What shape is this?", "How many shapes are there in the picture? Answer with one word."]
CHOICES = ["circle", "red square", "3", "no", "two blue triangles above a ring"]
DECODER_VARIANTS = [v for v in tiny_variants() if v[2].get("llm") != "t5"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the packing arithmetic -----------------------------------------------------------------------
def test_pack_choices_lays_sequences_back_to_back():
    packed = pack_choices([[5, 6], [7], [8, 9, 10]])
    assert packed.ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert packed.offsets.tolist() == [0, 1, 0, 0, 1, 2]
    assert packed.segment.tolist() == [0, 0, 1, 2, 2, 2]
    assert packed.lengths.tolist() == [2, 1, 3]
    with pytest.raises(ValueError, match="at least one token"):
        pack_choices([[1], []])


def test_packed_chunks_bound_choices_and_tokens():
    assert packed_chunks([2, 2, 2, 2, 2], max_choices=2, max_tokens=100) == [(0, 2), (2, 4), (4, 5)]
    assert packed_chunks([2, 3, 1, 5], max_choices=10, max_tokens=5) == [(0, 2), (2, 3), (3, 4)]
    assert packed_chunks([9, 1], max_choices=10, max_tokens=4) == [(0, 1), (1, 2)]  # a long choice alone
    assert packed_chunks([1, 1, 1], max_choices=10, max_tokens=10) == [(0, 3)]


def test_packed_attention_mask_sees_real_prefix_and_own_earlier_tokens():
    packed = pack_choices([[5, 6], [7]])
    prefix_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 left-padded
    mask = packed_attention_mask(prefix_mask, packed.segment, packed.offsets, torch.bfloat16)
    assert mask.shape == (2, 1, 3, 6) and mask.dtype == torch.bfloat16
    low = torch.finfo(torch.bfloat16).min
    allowed = (mask == 0)
    assert set(mask.unique().tolist()) == {0.0, low}
    assert allowed[0, 0].tolist() == [[False, True, True, True, False, False],
                                      [False, True, True, True, True, False],
                                      [False, True, True, False, False, True]]
    assert allowed[1, 0, :, :3].all()


def test_packed_scores_gather_each_choice_from_its_own_positions():
    vocab = 6
    logits = torch.randn(1, 3, vocab)
    first = torch.randn(1, vocab).log_softmax(-1)
    packed = pack_choices([[1, 2], [3]])
    lp = logits.log_softmax(-1)
    expected = torch.tensor([[(first[0, 1] + lp[0, 0, 2]) / 2, first[0, 3]]])
    torch.testing.assert_close(packed_scores(logits, first, packed), expected)


def test_sliding_window_caches_are_not_packed():
    from transformers import DynamicCache, LlamaConfig, MistralConfig

    assert is_full_attention_cache(DynamicCache(config=LlamaConfig(num_hidden_layers=2)))
    assert not is_full_attention_cache(DynamicCache(config=MistralConfig(num_hidden_layers=2, sliding_window=8)))
    assert not is_full_attention_cache(None)


# ---- every decoder-only family --------------------------------------------------------------------
@pytest.fixture(scope="module", params=DECODER_VARIANTS, ids=[v[0] for v in DECODER_VARIANTS])
def source(request, tmp_path_factory):
    name, family, overrides = request.param
    return f"hf:{build_tiny_model(family, tmp_path_factory.mktemp(name) / 'model', seed=0, **overrides)}"


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def _per_row(adapter, images: torch.Tensor) -> torch.Tensor:
    """The fallback path: one expanded cache row per (image, choice)."""
    adapter.packed_choices = False
    try:
        return adapter.score_choices(images, PROMPTS, CHOICES)
    finally:
        del adapter.packed_choices  # back to the class attribute


def _path_taken(adapter, images: torch.Tensor, monkeypatch) -> str:
    calls = []
    for name in ("_score_packed", "_score_continuations"):
        method = getattr(adapter, name)
        monkeypatch.setattr(adapter, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))
    adapter.score_choices(images, PROMPTS, CHOICES)
    monkeypatch.undo()
    return set(calls).pop() if len(set(calls)) == 1 else f"mixed {calls}"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_scores_equal_per_row_and_per_choice_forwards(source, attn, monkeypatch):
    adapter = load_adapter(source, device="cpu", attn_implementation=attn)
    images = _images()
    assert not adapter._prefix_batch(PROMPTS, (48, 48)).attention_mask.all()  # a left-padded prefix
    assert len({len(adapter.answer_ids(c)) for c in CHOICES}) > 2  # choices of different lengths
    packed = adapter.score_choices(images, PROMPTS, CHOICES)
    assert packed.shape == (2, len(CHOICES))
    torch.testing.assert_close(packed, _per_row(adapter, images), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one unpadded, uncached forward per (image, choice)
        brute = torch.tensor([[-adapter.lm_loss(images[b : b + 1], [PROMPTS[b]], [c]).item() for c in CHOICES]
                              for b in range(2)])
    torch.testing.assert_close(packed, brute, atol=1e-5, rtol=1e-5)
    expected = "_score_packed" if type(adapter).packed_choices else "_score_continuations"
    assert _path_taken(adapter, images, monkeypatch) == expected


def test_chunked_packed_scores_equal_one_pass(source):
    adapter = load_adapter(source, device="cpu")
    images = _images()
    whole = adapter.score_choices(images, PROMPTS, CHOICES)
    adapter.score_rows_per_pass = 4  # 2 images -> at most 2 choices per pass
    torch.testing.assert_close(adapter.score_choices(images, PROMPTS, CHOICES), whole, atol=1e-5, rtol=1e-5)
    adapter.score_rows_per_pass, adapter.score_tokens_per_pass = 512, 3  # token-bound chunks
    torch.testing.assert_close(adapter.score_choices(images, PROMPTS, CHOICES), whole, atol=1e-5, rtol=1e-5)


def test_bf16_packed_scores_follow_per_row(source):
    adapter = load_adapter(source, device="cpu", dtype="bf16")
    images = _images()
    packed = adapter.score_choices(images, PROMPTS, CHOICES)
    assert packed.dtype == torch.float32 and torch.isfinite(packed).all()
    # bf16 may round differently when the keys sit in one packed row (measured <= 5e-4); a mask that
    # lets choices see each other moves the scores by 0.03-0.14 on these models
    torch.testing.assert_close(packed, _per_row(adapter, images), atol=2e-3, rtol=0)
