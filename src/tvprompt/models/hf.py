"""The shared machinery of every Hugging Face MLLM adapter.

:class:`HFAdapter` implements the :class:`~tvprompt.models.base.MLLMAdapter` protocol once:
loading (dtype, device / device_map, attention implementation with an eager fallback, gradient
checkpointing), freezing, differentiable preprocessing, ``lm_loss`` (CE on the answer tokens + EOS),
FCA features taken from the same forward that feeds the LLM, KV-cached ``score_choices`` (choices
packed after one copy of the prefix, see ``ranking.py``) and greedy
``generate`` — for decoder-only and encoder-decoder (Flan-T5) language models.

A family module subclasses it, sets a few class attributes and overrides small hooks:

decoder-only families
    ``prompt_ids(prompt, image_size)``  token ids before the answer: BOS, chat format, image tokens
                                     (``image_size`` = (H, W) of the prompted image, for families
                                     whose image-token count depends on it)
    ``forward_kwargs(pixel_values, batch)``  extra model inputs (``pixel_values``, ``image_sizes``, ...)
    ``image_outputs(outputs)``       where the forward output keeps the vision-tower outputs, or
    ``capture_vision(batch)``        a context that captures them with forward hooks (``capture_io``)
    ``run_vision(pixel_values, image_size)``  a vision-only pass returning the same kind of object
    ``select_features(image_outputs, kind)``  (B, N, D) ``encoder`` or ``projected`` features
    ``continuation_kwargs(prefix, ids, mask)``  inputs for tokens that follow a cached prefix
    ``continuation_positions(prefix, offsets)``  their position ids (packed ranking restarts them per choice)
    ``continuation_module()``        the module those tokens go through (default: the whole model)
    ``cache_of(outputs)``            the KV cache inside a forward output

encoder-decoder families additionally
    ``encode(pixel_values, batch)`` -> :class:`EncoderState`, ``decode(state, ids, mask)`` -> logits

Sequences are left-padded, and decoder-only models get explicit ``position_ids``
(``cumsum(mask) - 1``), so a padded row computes exactly what it computes alone.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import TvpError, UsageError
from .base import FEATURE_KINDS
from .compile import check_mode, compile_blocks, eager
from .preprocessing import ImagePreprocessing, read_processor_config
from .ranking import (
    is_full_attention_cache,
    pack_choices,
    packed_attention_mask,
    packed_chunks,
    packed_scores,
)

log = logging.getLogger(__name__)

_ANSWER_ANCHOR = "A:"  # text an answer is tokenized after (see HFAdapter.answer_ids)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass
class TextBatch:
    """Left-padded token ids of a batch. ``target_mask`` marks answer tokens (+EOS) when there are any."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    target_mask: torch.Tensor | None = None  # (B, L)
    position_ids: torch.Tensor | None = None  # (B, L) or None: the model computes them
    image_size: tuple[int, int] | None = None  # (H, W) of the prompted pixels the batch goes with
    prompts: list[str] | None = None  # the instructions (for families that feed them elsewhere too)

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)


@dataclass
class EncoderState:
    """What an encoder-decoder family's encoder side produced for a batch of prefixes."""

    hidden: torch.Tensor  # (B, S, D) encoder last hidden state
    mask: torch.Tensor  # (B, S)
    image_outputs: Any = None  # for select_features
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 on CUDA, fp32 elsewhere; otherwise a torch dtype or its name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> tuple[torch.device, str | None]:
    """(device for inputs, device_map for from_pretrained). ``auto`` spreads the model with accelerate."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), "auto"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    try:
        return torch.device(device), None
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r} is not a torch device (try cpu, cuda, cuda:1 or auto)") from None


def pad_sequences(seqs: list[list[int]], pad_id: int, side: str = "left",
                  multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (N, width), padded on ``side``; width = max length rounded up to ``multiple``."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    pads = [width - len(s) for s in seqs]
    if side == "left":
        ids = [[pad_id] * n + list(s) for s, n in zip(seqs, pads, strict=True)]
        mask = [[0] * n + [1] * len(s) for s, n in zip(seqs, pads, strict=True)]
    else:
        ids = [list(s) + [pad_id] * n for s, n in zip(seqs, pads, strict=True)]
        mask = [[1] * len(s) + [0] * n for s, n in zip(seqs, pads, strict=True)]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each real token counted from the row's first real token (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class HFAdapter:
    """Base class of the HF families. Subclasses set the class attributes and override the hooks."""

    # ---- what a family declares -------------------------------------------------------------
    family: ClassVar[str] = ""  # registry key
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values it handles
    model_class: ClassVar[str] = ""  # transformers class name, or "package.module:Class"; resolved lazily
    display_name: ClassVar[str] = ""
    llm: ClassVar[str] = ""  # language models the family comes with, for `tvp models`
    add_bos: ClassVar[bool] = True  # prepend tokenizer.bos_token_id to prompts
    answer_prefix: ClassVar[str] = " "  # text put before an answer when it is tokenized
    explicit_positions: ClassVar[bool] = True  # pass cumsum(mask)-1 position_ids (decoder-only)
    feature_kinds: ClassVar[tuple[str, ...]] = FEATURE_KINDS
    # kinds whose features depend on the prompt (``vision_features`` takes the prompts; default empty)
    prompt_dependent_features: ClassVar[tuple[str, ...]] = ()
    roles: ClassVar[tuple[str, ...]] = ("source", "target")
    extra: ClassVar[str | None] = None  # pip extra needed beyond the core install
    remote_code: ClassVar[bool] = False  # runs the checkpoint's own code: from_pretrained takes trust_remote_code
    notes: ClassVar[str] = ""
    untested: ClassVar[str | None] = None  # why a family has no offline tiny checkpoint / contract tests
    # score_choices packs all choices after ONE copy of each image's cached prefix (see ranking.py):
    # exact wherever the model uses a 4-D attention mask as given and the KV cache is plain full
    # attention; False (or a sliding-window cache) falls back to one expanded cache row per (image, choice)
    packed_choices: ClassVar[bool] = True
    # score_choices runs at most this many (image, choice) continuations at once; more choices are
    # scored in chunks (packed: the cache is cropped back to the prefix between chunks; fallback: each
    # chunk expands a copy of the prefix cache)
    score_rows_per_pass: int = 512
    # packed scoring also starts a new chunk before the packed choice tokens pass this many (attention
    # over the packed tokens grows with their square)
    score_tokens_per_pass: int = 512
    # why regional torch.compile does not work for a family (``compile`` then warns and compiles nothing)
    compile_unsupported: ClassVar[str | None] = None
    # the torch.compile mode of the training path (see ``compile``); None = eager
    compile_mode: str | None = None
    # training text is padded to a multiple of this many tokens (``compile("reduce-overhead")`` sets 16:
    # CUDA graphs record one graph per shape, so the number of distinct lengths must stay small)
    text_multiple: int = 1

    # ---- construction ---------------------------------------------------------------------------
    def __init__(self, model: Any, tokenizer: Any, preprocessing: ImagePreprocessing, model_id: str,
                 device: torch.device | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.model_id = model_id
        self.name = Path(str(model_id).split(":", 1)[-1].rstrip("/")).name or str(model_id)
        model.requires_grad_(False)
        model.eval()
        self.device = device or next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.is_encoder_decoder = self._is_encoder_decoder()
        if tokenizer.eos_token_id is None:
            raise TvpError(f"{model_id}: the tokenizer has no eos token; set eos_token in tokenizer_config.json")
        # padded positions are masked out, so any id will do when a checkpoint defines no pad token
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._token_cache: dict[tuple[str, tuple[int, int] | None], list[int]] = {}  # see _tokens

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    @property
    def end_id(self) -> int:
        """The token that ends an answer (scored after it, stops generation): EOS unless a chat
        family ends its turns with another token (Qwen ``<|im_end|>``, Gemma 3 ``<end_of_turn>`` ...)."""
        return int(self.tokenizer.eos_token_id)

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        """Preprocessing used when the checkpoint has no image-processor config."""
        raise NotImplementedError

    @classmethod
    def load_tokenizer(cls, source: str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        model_id: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "auto",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> HFAdapter:
        """Load a checkpoint (hub id or local directory) of this family, frozen and in eval mode."""
        dev, device_map = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        model_cls = resolve_model_class(cls.model_class)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if device_map is not None:
            kwargs["device_map"] = device_map
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise UsageError(f"attn_implementation {attn_implementation!r} is not one of "
                             f"{', '.join(ATTN_IMPLEMENTATIONS)}")
        try:
            model = model_cls.from_pretrained(source, attn_implementation=attn_implementation, **kwargs)
        except (ValueError, ImportError) as e:
            if attn_implementation == "eager":
                raise TvpError(f"{source}: could not load the model ({e})") from None
            log.warning("%s: attention %r unavailable (%s); falling back to eager", source, attn_implementation, e)
            try:
                model = model_cls.from_pretrained(source, attn_implementation="eager", **kwargs)
            except (ValueError, OSError) as e2:
                raise TvpError(f"{source}: could not load the model ({e2})") from None
        except OSError as e:
            raise TvpError(f"{source}: could not load the model ({e})") from None
        if device_map is None:
            model.to(dev)
        else:
            dev = model.get_input_embeddings().weight.device
        tokenizer = cls.load_tokenizer(source)
        processor_config = read_local_or_hub_processor_config(source)
        default = cls.default_preprocessing(model.config)
        pre = (default if processor_config is None
               else ImagePreprocessing.from_processor_config(processor_config, default))
        adapter = cls(model, tokenizer, pre, model_id or f"hf:{source}", device=dev)
        adapter.setup(source)
        if gradient_checkpointing:  # after __init__'s eval(): it sets flags on the checkpointed layers
            enable_checkpointing(model)
        return adapter

    def setup(self, source: str) -> None:
        """Family hook run after loading (e.g. load a second tokenizer)."""

    def compile(self, mode: str = "default", dynamic: bool | None = True) -> int:
        """Regional ``torch.compile`` of the model's repeated blocks (``tvprompt.models.compile``), for the
        training path: ``lm_loss``, ``lm_loss_with_features``, ``vision_features``. ``score_choices`` and
        ``generate`` keep running eagerly (their KV cache changes shape every step). Returns the number
        of compiled blocks; 0 for ``off`` and for families that cannot be compiled (with a warning).
        ``reduce-overhead`` (CUDA graphs) also pads training text to a multiple of 16 tokens."""
        check_mode(mode, "compile")
        if mode == "off":
            return 0
        if self.compile_unsupported:
            log.warning("%s: not compiled, runs eagerly (%s)", self.model_id, self.compile_unsupported)
            return 0
        if mode == "reduce-overhead":
            self.text_multiple = 16
        count = compile_blocks(self.model, mode, dynamic=dynamic)
        self.compile_mode = mode
        return count

    @property
    def image_token_id(self) -> int:
        """The placeholder token the processor expands into image tokens (most configs name it so)."""
        return int(self.model.config.image_token_id)

    def _is_encoder_decoder(self) -> bool:
        config = self.model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else None
        return bool(getattr(text, "is_encoder_decoder", False))

    # ---- hooks ------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        """Token ids of the prefix for ``prompt`` (BOS, prompt format, image placeholder tokens).

        ``image_size`` is the (H, W) of the [0, 1] pixels the adapter was given.
        """
        raise NotImplementedError

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer continuation, its end token (``end_id``: EOS by default) included.

        With an ``answer_prefix`` (a space) the answer is tokenized after an anchor and the anchor's
        tokens are dropped, so the space is tokenized as in running text whatever the tokenizer does
        at the start of a string (SentencePiece ``▁`` prepending, byte-level ``Ġ``).
        """
        ids = self.text_ids(self.answer_prefix + answer)
        if self.answer_prefix:
            anchor = self.text_ids(_ANSWER_ANCHOR)
            full = self.text_ids(_ANSWER_ANCHOR + self.answer_prefix + answer)
            if full[: len(anchor)] == anchor:
                ids = full[len(anchor) :]
        return list(ids) + [self.end_id]

    def choice_ids(self, choice: str) -> list[int]:
        """Token ids ``score_choices`` ranks a choice by: the answer's, end token included (decoders)."""
        return self._tokens(choice)

    def bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.add_bos and bos is not None else []

    def _tokens(self, text: str, image_size: tuple[int, int] | None = None) -> list[int]:
        """``prompt_ids(text, image_size)``, or ``answer_ids(text)`` without a size, memoised: training
        tokenises the same few instructions and answers every step (callers must not mutate the list)."""
        key = (text, image_size)
        ids = self._token_cache.get(key)
        if ids is None:
            ids = self.prompt_ids(text, image_size) if image_size is not None else self.answer_ids(text)
            if len(self._token_cache) >= 16384:
                self._token_cache.clear()
            self._token_cache[key] = ids
        return ids

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        """Model inputs besides ids, mask, positions and cache."""
        return {} if pixel_values is None else {"pixel_values": pixel_values}

    def image_outputs(self, outputs: Any) -> Any:
        """The vision outputs inside a forward output (``select_features`` reads them)."""
        return outputs.image_outputs

    def capture_vision(self, batch: TextBatch) -> contextlib.AbstractContextManager[Any]:
        """A context whose value replaces ``image_outputs(outputs)`` when not None (see ``capture_io``)."""
        return contextlib.nullcontext(None)

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        """A vision-only pass returning what ``image_outputs`` returns (``image_size``: prompted H, W)."""
        raise NotImplementedError

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        """(B, N, D) features of ``kind`` from the vision outputs."""
        raise NotImplementedError

    def continuation_kwargs(self, prefix: TextBatch, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Inputs for ``ids`` (N, T) that continue the cached ``prefix`` rows (already expanded to N)."""
        out: dict[str, Any] = {"attention_mask": torch.cat([prefix.attention_mask, mask], dim=1)}
        positions = self.continuation_positions(prefix, positions_from_mask(mask))
        if positions is not None:
            out["position_ids"] = positions
        return out

    def continuation_positions(self, prefix: TextBatch, offsets: torch.Tensor) -> torch.Tensor | None:
        """``position_ids`` of tokens ``offsets`` (N, T) steps after the end of each cached ``prefix`` row
        (offset 0 = the first token after the prefix); None lets the model count positions itself."""
        if not self.explicit_positions:
            return None
        return prefix.lengths.unsqueeze(1) + offsets

    def continuation_module(self) -> Any:
        """The module that runs tokens after a cached prefix (text only, no pixels)."""
        return self.model

    def cache_of(self, outputs: Any) -> Any:
        """The KV cache a forward with ``use_cache=True`` returned."""
        cache = getattr(outputs, "cache", None)
        return cache if cache is not None else outputs.past_key_values

    def encode(self, pixel_values: torch.Tensor, batch: TextBatch) -> EncoderState:
        """Encoder-decoder families: run vision + encoder on the prefix."""
        raise NotImplementedError

    def decode(self, state: EncoderState, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder-decoder families: (N, T, V) decoder logits for decoder inputs ``ids``."""
        raise NotImplementedError

    # ---- the protocol ----------------------------------------------------------------------------
    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[0,1] (B,3,H,W) -> normalised vision input on the model's device and dtype; differentiable."""
        return self.preprocessing(pixels01.to(self.device)).to(self.dtype)

    def lm_loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str]) -> torch.Tensor:
        return self._lm_loss(pixels01, prompts, answers, None)[0]

    def lm_loss_with_features(
        self, pixels01: torch.Tensor, prompts: list[str], answers: list[str], kind: str = "encoder"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_kind(kind)
        loss, feats = self._lm_loss(pixels01, prompts, answers, kind)
        assert feats is not None
        return loss, feats

    def vision_features(
        self, pixels01: torch.Tensor, kind: str = "encoder", prompts: list[str] | None = None
    ) -> torch.Tensor:
        check_kind(kind)
        if kind in self.prompt_dependent_features:
            if prompts is not None and len(prompts) != pixels01.shape[0]:
                raise UsageError(f"vision_features: {pixels01.shape[0]} images, {len(prompts)} prompts")
            outputs = self.run_vision(self.preprocess(pixels01), _hw(pixels01), prompts=prompts)
        else:
            outputs = self.run_vision(self.preprocess(pixels01), _hw(pixels01))
        return self.select_features(outputs, kind)

    def score_choices(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        self._check_batch(pixels01, prompts)
        if not choices:
            raise UsageError("score_choices: choices is empty")
        with torch.no_grad(), _checkpointing_off(self.model), eager(self.compile_mode is not None):
            if self.is_encoder_decoder:
                return self._score_seq2seq(pixels01, prompts, choices)
            return self._score_decoder(pixels01, prompts, choices)

    def generate(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        self._check_batch(pixels01, prompts)
        with torch.no_grad(), _checkpointing_off(self.model), eager(self.compile_mode is not None):
            if self.is_encoder_decoder:
                tokens = self._generate_seq2seq(pixels01, prompts, max_new_tokens)
            else:
                tokens = self._generate_decoder(pixels01, prompts, max_new_tokens)
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    # ---- implementation --------------------------------------------------------------------------
    def _check_batch(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str] | None = None) -> None:
        if pixels01.ndim != 4 or pixels01.shape[1] != 3:
            raise UsageError(f"pixels: expected a (B, 3, H, W) tensor, got shape {tuple(pixels01.shape)}")
        if len(prompts) != pixels01.shape[0] or (answers is not None and len(answers) != len(prompts)):
            n_ans = "" if answers is None else f", {len(answers)} answers"
            raise UsageError(f"batch mismatch: {pixels01.shape[0]} images, {len(prompts)} prompts{n_ans}")

    def _prefix_batch(self, prompts: list[str], image_size: tuple[int, int], multiple: int = 1) -> TextBatch:
        seqs = [self._tokens(p, image_size) for p in prompts]
        ids, mask = pad_sequences(seqs, self.pad_id, "left", multiple)
        batch = self._finish_batch(ids, mask, image_size)
        batch.prompts = list(prompts)
        return batch

    def _finish_batch(self, ids: torch.Tensor, mask: torch.Tensor, image_size: tuple[int, int],
                      target: torch.Tensor | None = None) -> TextBatch:
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = positions_from_mask(mask) if self.explicit_positions else None
        return TextBatch(ids, mask, None if target is None else target.to(self.device), pos, image_size)

    def _call(self, batch: TextBatch, extra: dict[str, Any], module: Any = None, **kwargs: Any) -> Any:
        module = self.model if module is None else module
        inputs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.position_ids is not None:
            inputs["position_ids"] = batch.position_ids
        inputs.update(extra)
        params = _forward_params(module)
        if "logits_to_keep" in kwargs and "logits_to_keep" not in params:
            kwargs.pop("logits_to_keep")
        if "cache" in kwargs:  # renamed from past_key_values in transformers 5.x
            kwargs["cache" if "cache" in params else "past_key_values"] = kwargs.pop("cache")
        return module(**inputs, **kwargs)

    def _lm_loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str],
                 kind: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_batch(pixels01, prompts, answers)
        pixel_values = self.preprocess(pixels01)
        answer_ids = [self._tokens(a) for a in answers]
        hw = _hw(pixels01)
        if self.is_encoder_decoder:
            state = self.encode(pixel_values, self._prefix_batch(prompts, hw, self.text_multiple))
            ids, mask = pad_sequences(answer_ids, self.pad_id, "right", self.text_multiple)
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.decode(state, self._shift_right(ids), self._shift_right_mask(mask))
            loss = _masked_ce(logits, ids, mask.bool())
            feats = None if kind is None else self.select_features(state.image_outputs, kind)
            return loss, feats
        seqs = [self._tokens(p, hw) + a for p, a in zip(prompts, answer_ids, strict=True)]
        ids, mask = pad_sequences(seqs, self.pad_id, "left", self.text_multiple)
        answer_len = torch.tensor([len(a) for a in answer_ids])
        target = (torch.arange(ids.shape[1]) >= ids.shape[1] - answer_len[:, None]).to(mask.dtype)
        batch = self._finish_batch(ids, mask, hw, target)
        batch.prompts = list(prompts)
        keep = max(len(a) for a in answer_ids) + 1  # answers sit at the right end (left padding)
        keep = min(keep, ids.shape[1])
        with self.capture_vision(batch) if kind is not None else contextlib.nullcontext(None) as captured:
            out = self._call(batch, self.forward_kwargs(pixel_values, batch), logits_to_keep=keep, use_cache=False)
        logits = out.logits[:, -keep:]
        loss = _masked_ce(logits[:, :-1], batch.input_ids[:, -keep + 1 :], batch.target_mask[:, -keep + 1 :].bool())
        if kind is None:
            return loss, None
        return loss, self.select_features(captured if captured is not None else self.image_outputs(out), kind)

    def _score_decoder(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        prefix = self._prefix_batch(prompts, _hw(pixels01))
        out = self._call(prefix, self.forward_kwargs(self.preprocess(pixels01), prefix), logits_to_keep=1,
                         use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)  # (B, V): predicts each choice's first token
        cache = self.cache_of(out)
        per_pass = max(1, self.score_rows_per_pass // len(prompts))
        answers = [self.choice_ids(c) for c in choices]
        if self._can_pack(prefix, cache):
            chunks = packed_chunks([len(a) for a in answers], per_pass, self.score_tokens_per_pass)
            parts = []
            for start, stop in chunks:
                if parts:  # back to the prefix: the previous chunk's tokens are in the cache
                    cache.crop(prefix.input_ids.shape[1] - cache.get_seq_length())
                parts.append(self._score_packed(prefix, first, cache, answers[start:stop]))
            return torch.cat(parts, dim=1)
        if per_pass >= len(choices):
            return self._score_continuations(prefix, first, cache, answers)
        parts = [  # many choices: bound the expanded cache, re-expanding a copy of the prefix cache
            self._score_continuations(prefix, first, copy.deepcopy(cache), answers[i : i + per_pass])
            for i in range(0, len(choices), per_pass)
        ]
        return torch.cat(parts, dim=1)

    def _can_pack(self, prefix: TextBatch, cache: Any) -> bool:
        """Packed scoring is exact for plain full-attention caches holding exactly the prefix."""
        if not self.packed_choices or not is_full_attention_cache(cache):
            return False
        if cache.get_seq_length() != prefix.input_ids.shape[1]:
            return False
        offsets = torch.zeros_like(prefix.input_ids[:, :1])
        return self.continuation_positions(prefix, offsets) is not None

    def _score_packed(self, prefix: TextBatch, first: torch.Tensor, cache: Any,
                      answers: list[list[int]]) -> torch.Tensor:
        """(B, C) scores of the token sequences ``answers``, packed back to back after one copy of each
        cached ``prefix`` row; the cache grows by the packed tokens (the caller crops it)."""
        batch_size = prefix.input_ids.shape[0]
        packed = pack_choices(answers)
        ids = packed.ids.to(self.device).expand(batch_size, -1)
        mask = packed_attention_mask(prefix.attention_mask, packed.segment.to(self.device),
                                     packed.offsets.to(self.device), self.dtype)
        kwargs = {"attention_mask": mask,
                  "position_ids": self.continuation_positions(
                      prefix, packed.offsets.to(self.device).expand(batch_size, -1))}
        out = self._call(TextBatch(ids, torch.ones_like(ids), image_size=prefix.image_size), kwargs,
                         module=self.continuation_module(), cache=cache, use_cache=True)
        return packed_scores(out.logits, first, packed)

    def _score_continuations(self, prefix: TextBatch, first: torch.Tensor, cache: Any,
                             answers: list[list[int]]) -> torch.Tensor:
        """(B, C) scores of the token sequences ``answers`` after the cached ``prefix``, one row per
        (image, choice); ``cache`` is expanded in place."""
        n_choices, batch_size = len(answers), prefix.input_ids.shape[0]
        cache.batch_repeat_interleave(n_choices)
        ids, mask = pad_sequences(answers, self.pad_id, "right")
        ids, mask = ids.to(self.device).repeat(batch_size, 1), mask.to(self.device).repeat(batch_size, 1)
        expanded = _expand_batch(prefix, n_choices)
        out = self._call(
            TextBatch(ids, mask, image_size=prefix.image_size), self.continuation_kwargs(expanded, ids, mask),
            module=self.continuation_module(), cache=cache, use_cache=True,
        )
        ids, mask = ids.to(out.logits.device), mask.to(out.logits.device)  # differ under device_map="auto"
        logp = out.logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        lp0 = first.to(ids.device).repeat_interleave(n_choices, 0).gather(-1, ids[:, :1]).squeeze(-1)
        total = lp0 + (logp * mask[:, 1:]).sum(-1)
        return (total / mask.sum(-1)).view(batch_size, n_choices)

    def _generate_decoder(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        prefix = self._prefix_batch(prompts, _hw(pixels01))
        out = self._call(prefix, self.forward_kwargs(self.preprocess(pixels01), prefix), logits_to_keep=1,
                         use_cache=True)
        cache = self.cache_of(out)
        eos = self.end_id
        batch_size = len(prompts)
        done = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        running = prefix
        step_mask = torch.ones(batch_size, 1, dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1).to(self.device)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            tokens.append(nxt)
            done |= nxt == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            ids = nxt.unsqueeze(1)
            out = self._call(TextBatch(ids, step_mask, image_size=prefix.image_size),
                             self.continuation_kwargs(running, ids, step_mask),
                             module=self.continuation_module(), cache=cache, use_cache=True)
            # the cache object is updated in place
            running = TextBatch(torch.cat([running.input_ids, ids], 1),
                                torch.cat([running.attention_mask, step_mask], 1),
                                image_size=prefix.image_size)
        return _strip_eos(torch.stack(tokens, 1) if tokens else torch.zeros(batch_size, 0, dtype=torch.long), eos)

    def _shift_right(self, ids: torch.Tensor) -> torch.Tensor:
        start = self._decoder_start_id()
        return torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)

    @staticmethod
    def _shift_right_mask(mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1)

    def _decoder_start_id(self) -> int:
        text = self.model.config.get_text_config(decoder=True)
        start = getattr(text, "decoder_start_token_id", None)
        return int(start if start is not None else self.pad_id)

    def _score_seq2seq(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        n_choices, batch_size = len(choices), len(prompts)
        state = self.encode(self.preprocess(pixels01), self._prefix_batch(prompts, _hw(pixels01)))
        state = EncoderState(state.hidden.repeat_interleave(n_choices, 0), state.mask.repeat_interleave(n_choices, 0))
        ids, mask = pad_sequences([self._tokens(c) for c in choices], self.pad_id, "right")
        ids, mask = ids.to(self.device).repeat(batch_size, 1), mask.to(self.device).repeat(batch_size, 1)
        logits = self.decode(state, self._shift_right(ids), self._shift_right_mask(mask))
        ids, mask = ids.to(logits.device), mask.to(logits.device)
        logp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        return ((logp * mask).sum(-1) / mask.sum(-1)).view(batch_size, n_choices)

    def _generate_seq2seq(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        state = self.encode(self.preprocess(pixels01), self._prefix_batch(prompts, _hw(pixels01)))
        eos = self.end_id
        batch_size = len(prompts)
        dec = torch.full((batch_size, 1), self._decoder_start_id(), dtype=torch.long, device=self.device)
        done = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):  # answers are short: recompute the decoder, no decoder cache
            nxt = self.decode(state, dec, torch.ones_like(dec))[:, -1].argmax(-1).to(self.device)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            dec = torch.cat([dec, nxt[:, None]], 1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return _strip_eos(dec[:, 1:], eos)


def resolve_model_class(name: str) -> Any:
    """A transformers class by name, or any class as ``"package.module:Class"`` (composed models)."""
    import importlib

    import transformers

    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    return getattr(transformers, name)


def check_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise UsageError(f"feature kind {kind!r} is not one of {', '.join(FEATURE_KINDS)}")


def enable_checkpointing(model: Any) -> None:
    """Gradient checkpointing that works in eval mode.

    HF layers checkpoint only when ``training`` is set; we set that flag on the checkpointed layers
    alone (not their children, which stay in eval mode), and zero the dropout rates those layers
    read from their own ``training`` flag (e.g. OPT's ``nn.functional.dropout(..., self.training)``),
    so the forward is the eval forward.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.eval()
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True
            for name, value in list(vars(module).items()):
                if "dropout" in name and isinstance(value, float):
                    setattr(module, name, 0.0)


@dataclass
class CapturedIO:
    """First positional input and output of a module during one forward (``capture_io``)."""

    batch_size: int
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextlib.contextmanager
def capture_io(module: torch.nn.Module, batch_size: int) -> Iterator[CapturedIO]:
    """Record ``module``'s input and output (with their autograd graph) while the context is open.

    This is how FCA features come out of the very forward that feeds the LLM, on every
    transformers version, whatever its output classes expose.
    """
    box = CapturedIO(batch_size)

    def hook(_module: Any, args: tuple, output: Any) -> None:
        box.input = args[0] if args else None
        box.output = output if isinstance(output, torch.Tensor) else output[0]

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


@contextlib.contextmanager
def _checkpointing_off(model: Any) -> Iterator[None]:
    """Switch checkpointed layers to plain eval while scoring: some transformers 5.x releases drop
    the KV cache in checkpointed layers even without gradients."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) and m.training]
    for m in layers:
        m.training = False
    try:
        yield
    finally:
        for m in layers:
            m.training = True


def read_local_or_hub_processor_config(source: str) -> dict[str, Any] | None:
    if Path(source).is_dir():
        return read_processor_config(source)
    from transformers.utils import cached_file

    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            return read_processor_config(Path(path).parent)
    return None


_PARAMS: dict[type, frozenset[str]] = {}


def _forward_params(module: Any) -> frozenset[str]:
    cls = type(module)
    if cls not in _PARAMS:
        _PARAMS[cls] = frozenset(inspect.signature(module.forward).parameters)
    return _PARAMS[cls]


def _hw(pixels01: torch.Tensor) -> tuple[int, int]:
    return int(pixels01.shape[-2]), int(pixels01.shape[-1])


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions of the batch (token mean, like HF ``labels``)."""
    # ignore_index instead of boolean indexing: no data-dependent shape, so no wait for the device
    targets = targets.to(logits.device).masked_fill(~mask.to(logits.device), -100)  # device_map="auto": last device
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)


def _expand_batch(batch: TextBatch, n: int) -> TextBatch:
    return TextBatch(batch.input_ids.repeat_interleave(n, 0), batch.attention_mask.repeat_interleave(n, 0),
                     image_size=batch.image_size)


def _strip_eos(tokens: torch.Tensor, eos: int) -> list[list[int]]:
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


class ProjectorFeatures:
    """Hooks for families whose projector reads the ``encoder`` feature and writes the ``projected``
    one (``model.model.multi_modal_projector``): both come from the forward that feeds the LLM."""

    model: Any

    def capture_vision(self, batch: TextBatch) -> Any:
        return capture_io(self.model.model.multi_modal_projector, batch.input_ids.shape[0])

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        with capture_io(self.model.model.multi_modal_projector, pixel_values.shape[0]) as box:
            self.model.model.get_image_features(pixel_values)
        return box

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        feats = image_outputs.input if kind == "encoder" else image_outputs.output
        return feats.reshape(image_outputs.batch_size, -1, feats.shape[-1])
