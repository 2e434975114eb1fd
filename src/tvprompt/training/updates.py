"""The update rules and the step-size schedule, as pure functions of tensors and the config."""

from __future__ import annotations

import hashlib
import math

import torch

from .config import TrainConfig


def lr_at(step: int, config: TrainConfig, total_steps: int, steps_per_epoch: int | None = None) -> float:
    """Learning rate (or step size γ) for update ``step`` (0-based) of ``total_steps``.

    ``cosine`` anneals per update to ``min_lr`` at the last one; ``cosine_epoch`` is the released
    code's ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch (``steps_per_epoch`` updates),
    so a one-epoch run keeps γ constant.
    """
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine_epoch":
        per_epoch = max(1, steps_per_epoch or total_steps)
        epochs = max(1, math.ceil(total_steps / per_epoch))
        progress = (step // per_epoch) / epochs
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def sgd_momentum_step(
    delta: torch.Tensor, grad: torch.Tensor, momentum_buf: torch.Tensor, lr: float, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """VP: ``v <- μ·v + g``; ``δ <- δ − lr·v`` (torch.optim.SGD's rule with zero-initialised v)."""
    buf = momentum * momentum_buf + grad
    return delta - lr * buf, buf


def normalized_step(delta: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, lr: float) -> torch.Tensor:
    """EVP/TVP (Eq. 7): ``δ − γ·g/‖g‖₂`` with g restricted to the trainable pixels (``mask``).

    The released code normalised over the whole frame, so the step size depended on the image
    content under the interior; here the norm covers the prompt's own pixels only.
    """
    g = grad * mask
    # a zero gradient leaves δ as it is (0 / tiny = 0) without reading the norm back to the host
    return delta - lr * g / g.norm().clamp_min(torch.finfo(g.dtype).tiny)


def frame_normalized_step(delta: torch.Tensor, frame_grad: torch.Tensor, mask: torch.Tensor, lr: float) -> torch.Tensor:
    """The released code's step: ``δ − γ·M ⊙ g/(‖g‖₂ + 1e-10)`` with ``g`` the gradient of the whole frame.

    ``frame_grad`` is Σ_b ∂L/∂x̃_b over the prompted images (interior pixels included), so the step
    on the border shrinks as the interior's share of the gradient grows.
    """
    return delta - lr * mask * frame_grad / (frame_grad.norm() + 1e-10)


def seed_for(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs and processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
