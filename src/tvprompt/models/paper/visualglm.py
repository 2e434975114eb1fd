"""VisualGLM-6B over its own remote code (``trust_remote_code=True``). UNTESTED in this project.

VisualGLM-6B is not in transformers: its checkpoint ships ``modeling_chatglm.py`` / ``visual.py``
(ChatGLM-6B + an EVA ViT + Q-Former ``image_encoder``, which import ``SwissArmyTransformer``).
Our build machines reach no model hub, so this adapter was written against the released code's
interface and has never run here; ``tvp models`` marks it untested. Running the checkpoint's code
is opt-in: ``--trust-remote-code`` (``trust_remote_code=True``) or ``TVPROMPT_TRUST_REMOTE_CODE=1``.

The model's own image path is used (``images`` + ``pre_image_length``: the 32 image embeddings
replace 32 placeholder tokens right after ``<img>``). Sequence, as ``build_inputs_with_image``::

    <img>[32 x <unk>]</img>问：{prompt}\\n答：[gMASK]<sop>{answer}<eop>

Fixes over the released code: batches of any size (every row starts with ``<img>``, so the image
sits at the same offset in all rows; rows are right-padded so each row's own ``[gMASK]``/``<sop>``
positions drive ChatGLM's masks); the loss covers the answer tokens and EOS only (the released
fine-tuning labels also scored ``<sop>`` after ``[gMASK]`` and, without ``ignore_pad_token_for_loss``,
the padding). ``score_choices`` runs full forwards (ChatGLM's legacy cache cannot be shared across
choices); ``generate`` decodes one image at a time with the model's own ``generate``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import TvpError, UsageError
from ..hf import HFAdapter, check_kind, pad_sequences, resolve_device, resolve_dtype
from ..preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from ..registry import register_family

log = logging.getLogger(__name__)

OPT_IN = "TVPROMPT_TRUST_REMOTE_CODE"
PROMPT_FORMAT = "</img>问：{}\n答："


@dataclass
class GLMBatch:
    """Right-padded ids with the image slots at ``pre_image`` and the positions to score in ``target``."""

    input_ids: torch.Tensor  # (N, L)
    target: torch.Tensor  # (N, L) bool: tokens predicted by the loss (answer + EOS)
    pre_image: int


def prefix_ids(tokenizer: Any, prompt: str, image_length: int) -> tuple[list[int], int]:
    """(``<img>`` + image slots + ``</img>问：{prompt}\\n答：`` + ``[gMASK] <sop>``, offset of the slots)."""
    head = list(tokenizer.encode("<img>", add_special_tokens=False))
    body = list(tokenizer.encode(PROMPT_FORMAT.format(prompt), add_special_tokens=False))
    slots = [tokenizer.unk_token_id] * image_length
    return list(tokenizer.build_inputs_with_special_tokens(head + slots + body)), len(head)


def build_sequences(tokenizer: Any, prompts: list[str], answers: list[str], image_length: int) -> GLMBatch:
    """VisualGLM's ``build_inputs_with_image`` for each (prompt, answer), right-padded, answers marked."""
    rows, targets, pre_image = [], [], 0
    for prompt, answer in zip(prompts, answers, strict=True):
        prefix, pre_image = prefix_ids(tokenizer, prompt, image_length)
        tail = list(tokenizer.encode(answer, add_special_tokens=False)) + [tokenizer.eos_token_id]
        rows.append(prefix + tail)
        targets.append([0] * len(prefix) + [1] * len(tail))
    ids, mask = pad_sequences(rows, tokenizer.pad_token_id, "right")
    target = torch.zeros_like(mask, dtype=torch.bool)
    for i, t in enumerate(targets):
        target[i, : len(t)] = torch.tensor(t, dtype=torch.bool)
    return GLMBatch(ids, target, pre_image)


def answer_logprobs(logits: torch.Tensor, batch: GLMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs of the target tokens per row, their count); logits[t] predicts token t+1."""
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.target[:, 1:].to(logp.device)
    return (logp * mask).sum(-1), mask.sum(-1)


@register_family("visualglm")
class VisualGLMAdapter(HFAdapter):
    model_types = ("chatglm",)
    remote_code = True  # runs the checkpoint's own code: loaded only with trust_remote_code
    model_class = "AutoModel (remote code)"
    display_name = "VisualGLM-6B"
    llm = "ChatGLM-6B"
    untested = "runs the checkpoint's remote code, which our machines cannot fetch"
    notes = (f"UNTESTED here ({untested}); opt in with --trust-remote-code or {OPT_IN}=1; the remote code needs "
             "pip install SwissArmyTransformer")

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int((getattr(config, "eva_config", None) or {}).get("image_size", 224))  # BlipImageEvalProcessor(224)
        return ImagePreprocessing(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")

    @classmethod
    def from_pretrained(cls, source: str, *, model_id: str | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype = "auto", attn_implementation: str = "sdpa",
                        gradient_checkpointing: bool = False, trust_remote_code: bool = False) -> VisualGLMAdapter:
        if not trust_remote_code and os.environ.get(OPT_IN) != "1":
            raise UsageError(f"{source}: VisualGLM runs the checkpoint's own Python code; pass --trust-remote-code "
                             f"(trust_remote_code=True) or set {OPT_IN}=1 to allow it")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        dev, device_map = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=True)
            if not hasattr(config, "image_length"):
                raise TvpError(f"{source}: a ChatGLM checkpoint without an image encoder; not VisualGLM")
            kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": True}
            if device_map is not None:
                kwargs["device_map"] = device_map
            model = AutoModel.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        except (OSError, ValueError, ImportError) as e:
            raise TvpError(f"{source}: could not load VisualGLM ({e})") from None
        if device_map is None:
            model.to(dev)
        log.warning("%s: VisualGLM adapter is untested in tvprompt; check its outputs before relying on them", source)
        return cls(model, tokenizer, cls.default_preprocessing(model.config), model_id or f"hf:{source}", device=dev)

    @property
    def image_length(self) -> int:
        return int(self.model.config.image_length)

    # ---- the protocol, on the model's own forward ---------------------------------------------------
    def _forward(self, pixels01: torch.Tensor, batch: GLMBatch, kind: str | None = None) -> tuple[Any, Any]:
        captured: dict[str, Any] = {}
        hooks = []
        if kind is not None:
            module = self.model.image_encoder.vit if kind == "encoder" else self.model.image_encoder
            hooks.append(module.register_forward_hook(lambda m, i, o: captured.setdefault("f", o)))
        try:
            out = self.model(input_ids=batch.input_ids.to(self.device), images=self.preprocess(pixels01),
                             pre_image_length=batch.pre_image, return_dict=True)
        finally:
            for h in hooks:
                h.remove()
        feats = captured.get("f")
        return out.logits, (feats[0] if isinstance(feats, tuple) else feats)

    def _loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str],
              kind: str | None) -> tuple[torch.Tensor, Any]:
        self._check_batch(pixels01, prompts, answers)
        batch = build_sequences(self.tokenizer, prompts, answers, self.image_length)
        logits, feats = self._forward(pixels01, batch, kind)
        logp = logits[:, :-1].float().log_softmax(-1)
        tgt = batch.input_ids[:, 1:].to(logp.device)
        mask = batch.target[:, 1:].to(logp.device)
        return F.nll_loss(logp[mask], tgt[mask]), feats

    def lm_loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str]) -> torch.Tensor:
        return self._loss(pixels01, prompts, answers, None)[0]

    def lm_loss_with_features(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str],
                              kind: str = "encoder") -> tuple[torch.Tensor, torch.Tensor]:
        check_kind(kind)
        return self._loss(pixels01, prompts, answers, kind)

    def vision_features(self, pixels01: torch.Tensor, kind: str = "encoder",
                        prompts: list[str] | None = None) -> torch.Tensor:
        check_kind(kind)  # the image encoder reads no text: ``prompts`` does not change the features
        enc = self.model.image_encoder
        x = self.preprocess(pixels01)
        out = enc.vit(x) if kind == "encoder" else enc(x)
        return out[0] if isinstance(out, tuple) else out

    def score_choices(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        self._check_batch(pixels01, prompts)
        if not choices:
            raise UsageError("score_choices: choices is empty")
        n = len(choices)
        rows_p = [p for p in prompts for _ in choices]
        rows_a = [c for _ in prompts for c in choices]
        with torch.no_grad():
            batch = build_sequences(self.tokenizer, rows_p, rows_a, self.image_length)
            logits, _ = self._forward(pixels01.repeat_interleave(n, 0), batch)
            total, count = answer_logprobs(logits, batch)
        return (total / count).view(len(prompts), n)

    def generate(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        self._check_batch(pixels01, prompts)
        out = []
        with torch.no_grad():
            for b, prompt in enumerate(prompts):
                prefix, pre_image = prefix_ids(self.tokenizer, prompt, self.image_length)
                ids = self.model.generate(
                    input_ids=torch.tensor([prefix], device=self.device), images=self.preprocess(pixels01[b : b + 1]),
                    pre_image_length=pre_image, max_new_tokens=max_new_tokens, do_sample=False,
                )
                out.append(self.tokenizer.decode(ids[0, len(prefix) :].tolist(), skip_special_tokens=True).strip())
        return out
