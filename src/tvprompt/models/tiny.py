"""Tiny, randomly initialised checkpoints of every family, built fully offline.

Used by the tests, the mini zoo and the benchmarks: ``build_tiny_model("llava", dir)`` writes a
directory that ``load_adapter("hf:<dir>")`` loads exactly like a downloaded checkpoint (weights via
``save_pretrained``, a byte-level BPE tokenizer trained locally with the ``tokenizers`` library and
wrapped as ``PreTrainedTokenizerFast``, and a ``preprocessor_config.json``).

Each family module registers its tiny builder with ``@register_tiny("family", special_tokens=...)``:
a function ``(tokenizer, **overrides) -> TinySpec``. ``TinySpec.init`` fixes initialisations that
would make a random model useless for tests (e.g. BLIP-2's vision ``initializer_range`` of 1e-10).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..files import atomic_dir
from .preprocessing import ImagePreprocessing

# Words the default tokenizer is trained on: prompt formats, ShapeWorld-style questions and answers.
DEFAULT_CORPUS = [
    "USER: ASSISTANT: Question: Answer: Short answer: user model assistant system",
    "What is in the image? What shape is this? What color is the shape? Is there a red circle?",
    "How many shapes are there? How many objects are in the picture? Answer with one word.",
    "a photo of a circle square triangle star cross heart diamond ring hexagon ellipse",
    "red green blue yellow purple orange white black gray pink brown cyan",
    "yes no zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10",
    "small large big tiny left right top bottom center above below next to the a an of in on is are",
    "Describe the image. Classify the image. Which shape? Which color? Count the shapes.",
]

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


@dataclass
class TinySpec:
    """What a tiny builder returns: the config to instantiate and how to finish the model."""

    config: Any
    model_class: str  # transformers class name, or "package.module:Class"
    preprocessing: ImagePreprocessing
    image_processor_type: str  # written into preprocessor_config.json
    init: Callable[[Any], None] | None = None  # fix-ups after random init
    processor_extra: dict[str, Any] | None = None  # more preprocessor_config.json fields
    save_extra: Callable[[Path], None] | None = None  # write more files into the checkpoint directory


@dataclass
class _TinyEntry:
    builder: Callable[..., TinySpec]
    special_tokens: dict[str, str]
    chat_template: str | None
    variants: dict[str, dict[str, Any]]


_TINY: dict[str, _TinyEntry] = {}


def register_tiny(
    family: str,
    special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    variants: dict[str, dict[str, Any]] | None = None,
) -> Callable[[Callable[..., TinySpec]], Callable[..., TinySpec]]:
    """Register the tiny builder of ``family``.

    ``special_tokens`` maps tokenizer attribute names to tokens (``{"image_token": "<image>"}``);
    ``variants`` names builder overrides that tests cover separately (``{"t5": {"llm": "t5"}}``).
    """

    def wrap(fn: Callable[..., TinySpec]) -> Callable[..., TinySpec]:
        if family in _TINY and _TINY[family].builder is not fn:
            raise ValueError(f"tiny builder for {family!r} is already registered")
        _TINY[family] = _TinyEntry(fn, dict(special_tokens or {}), chat_template, dict(variants or {"": {}}))
        return fn

    return wrap


def tiny_families() -> list[str]:
    from .registry import list_families

    list_families()  # imports the family modules, which register their builders
    return sorted(_TINY)


def tiny_variants() -> list[tuple[str, str, dict[str, Any]]]:
    """(test id, family, builder overrides) for every registered variant, e.g. ``("blip2-t5", "blip2", {...})``."""
    out = []
    for family in tiny_families():
        for name, overrides in _TINY[family].variants.items():
            out.append((f"{family}-{name}" if name else family, family, dict(overrides)))
    return out


def _entry(family: str) -> _TinyEntry:
    tiny_families()
    if family not in _TINY:
        raise UsageError(f"no tiny builder for family {family!r}; known: {', '.join(sorted(_TINY))}")
    return _TINY[family]


def build_tokenizer(
    extra_special_tokens: dict[str, str] | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 400,
    chat_template: str | None = None,
) -> Any:
    """A byte-level BPE tokenizer trained offline on ``corpus`` (never produces unknown tokens).

    Special tokens get the first ids in this order: ``<pad>`` 0, ``</s>`` 1, ``<s>`` 2, ``<unk>`` 3,
    then ``extra_special_tokens`` (e.g. ``{"image_token": "<image>"}``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = dict(extra_special_tokens or {})
    specials = list(SPECIAL_TOKENS.values()) + [t for t in extra.values() if t not in SPECIAL_TOKENS.values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS) * 4, trainer)
    named = {k: v for k, v in extra.items() if k in ("cls_token", "sep_token", "mask_token")}
    others = {k: v for k, v in extra.items() if k not in named}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, **named, extra_special_tokens=others or None)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_tokenizer(family: str, corpus: Iterable[str] | None = None) -> Any:
    entry = _entry(family)
    return build_tokenizer(entry.special_tokens, corpus=corpus, chat_template=entry.chat_template)


def tiny_spec(family: str, tokenizer: Any | None = None, **overrides: Any) -> TinySpec:
    """What the tiny builder of ``family`` makes (config, model class, preprocessing, fix-ups);
    ``overrides`` go to the builder (e.g. ``image_size=48, hidden=96``)."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(family)
    return _entry(family).builder(tokenizer, **overrides)


def tiny_config(family: str, tokenizer: Any | None = None, **overrides: Any) -> Any:
    """The tiny config of ``family`` (a transformers config object); ``overrides`` go to its builder."""
    return tiny_spec(family, tokenizer, **overrides).config


def build_tiny_model(family: str, directory: str | os.PathLike, seed: int = 0,
                     corpus: Iterable[str] | None = None, **overrides: Any) -> Path:
    """Write a tiny random checkpoint of ``family`` to ``directory`` and return the path."""
    from .hf import resolve_model_class

    tokenizer = tiny_tokenizer(family, corpus=corpus)
    spec = tiny_spec(family, tokenizer, **overrides)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = resolve_model_class(spec.model_class)(spec.config)
        if spec.init is not None:
            with torch.no_grad():
                spec.init(model)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    processor = {"image_processor_type": spec.image_processor_type, **spec.preprocessing.to_processor_config()}
    processor.update(spec.processor_extra or {})
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
        if spec.save_extra is not None:
            spec.save_extra(tmp)
    return Path(directory)


def init_responsive_(model: Any) -> None:
    """Re-initialise a tiny random MLLM with std 0.1 so its answers depend on the image.

    With transformers' default std 0.02 through a 2-layer tower, projector and LLM, the answer loss
    barely moves with the pixels, and prompt-learning tests would test nothing.
    """
    init_normal_(model, std=0.1)


def init_normal_(module: Any, std: float = 0.02) -> None:
    """Re-initialise every Linear / Conv / Embedding weight of ``module`` from N(0, std²)."""
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.Embedding) and weight is not None:
            torch.nn.init.normal_(weight, std=std)
