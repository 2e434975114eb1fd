"""The adapter protocol every MLLM family implements, and the guide protocol for TSE.

The rest of tvprompt talks to models only through these methods. Pixels are always the
prompted images: float (B, 3, H, W) in [0, 1], on any device; the adapter resizes and
normalises them itself, differentiably. Weights are frozen and in eval mode, so a backward
pass computes gradients for the pixels (and so for the prompt) only.

Optional on both: ``compile(mode) -> int`` (regional ``torch.compile`` of the training path,
``tvprompt.models.compile``); the trainer calls it when ``--compile`` is on and warns for models
that lack it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

FEATURE_KINDS = ("encoder", "projected")


@runtime_checkable
class MLLMAdapter(Protocol):
    family: str  # registry key, e.g. "llava"
    model_id: str  # checkpoint id or path it was loaded from
    name: str  # short display name for tables
    input_size: tuple[int, int]  # (h, w) the vision tower takes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[0,1] (B,3,H,W) -> the vision tower's normalised input; differentiable."""
        ...

    def lm_loss(self, pixels01: torch.Tensor, prompts: list[str], answers: list[str]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (+EOS) given image and instruction; scalar."""
        ...

    def lm_loss_with_features(
        self, pixels01: torch.Tensor, prompts: list[str], answers: list[str], kind: str = "encoder"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``lm_loss`` plus ``vision_features(kind)`` taken from the same forward pass (for FCA)."""
        ...

    def vision_features(
        self, pixels01: torch.Tensor, kind: str = "encoder", prompts: list[str] | None = None
    ) -> torch.Tensor:
        """(B, N, D) features: ``encoder`` = vision-tower output, ``projected`` = tokens the LLM sees.

        Families whose features of a kind depend on the instruction list that kind in
        ``prompt_dependent_features`` and compute it for ``prompts`` (None = an empty instruction);
        the others ignore ``prompts``.
        """
        ...

    def score_choices(self, pixels01: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
        """(B, C) mean per-token log-likelihood of each choice (+EOS) as the answer; shared prefix once."""
        ...

    def generate(self, pixels01: torch.Tensor, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy decoding of an answer per image."""
        ...


@runtime_checkable
class Guide(Protocol):
    """A CLIP-like model for the TSE loss."""

    model_id: str
    device: torch.device
    logit_scale: float

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(T, D) L2-normalised text embeddings (no grad needed; cached by callers)."""
        ...

    def encode_image(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised image embeddings of [0,1] pixels; differentiable."""
        ...
