"""The training objective for one batch: Eq. 6 over one or several source models.

``L = mean_k [L_LLM,k + λ1·L_FCA,k] − λ2·L_TSE``: each source model gets the same prompted
pixels (moved to its own device) and its own FCA reference; TSE depends only on the guide.

- The prompted vision features for FCA come from the same forward pass as the LLM loss
  (``adapter.lm_loss_with_features``), never from a second pass.
- Reference features are computed under ``no_grad`` and cached per (sample, flip) while the
  augmentation is deterministic (flip only), within a memory budget.
- TSE text embeddings are computed once per run (:class:`TaskTexts`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from ..imagefit import fit_images
from ..prompt import VisualPrompt
from .augment import Augmentation
from .losses import fca_loss, total_loss, tse_loss

log = logging.getLogger(__name__)


class FcaReferences:
    """Reference features ``f(X_ref)`` for one source model, cached while deterministic."""

    def __init__(self, adapter: Any, prompt: VisualPrompt, kind: str, reference: str, cache_mb: float) -> None:
        self.adapter = adapter
        self.kind = kind
        # InstructBLIP-like: the projected tokens read the instruction, so the reference must see
        # the prompted pass's instruction too (else FCA is not 0 at δ = 0)
        self.per_prompt = kind in getattr(adapter, "prompt_dependent_features", ())
        self.reference = reference
        self.blank = VisualPrompt(prompt.config).to(prompt.delta.device)  # same layout, δ = 0
        self.budget = int(cache_mb * 2**20)
        self.used = 0
        self.cache: dict[tuple[str, bool, str | None], torch.Tensor] = {}
        self.computed = 0  # samples whose features were computed (for tests and logs)

    @torch.no_grad()
    def _compute(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 prompts: Sequence[str] | None = None) -> torch.Tensor:
        if self.reference == "shrunk":
            pixels = self.blank.apply(images, generator=generator)
        else:
            cfg = self.blank.config  # the unprompted image, fitted to the whole frame as the prompt fits its inner part
            pixels = fit_images(images.to(self.blank.delta.device), (cfg.image_height, cfg.image_width), cfg.fit,
                                cfg.resample)
        self.computed += pixels.shape[0]
        pixels = pixels.to(self.adapter.device)
        if self.per_prompt:
            return self.adapter.vision_features(pixels, kind=self.kind, prompts=list(prompts or [])).detach()
        return self.adapter.vision_features(pixels, kind=self.kind).detach()

    @torch.no_grad()
    def get(self, images: torch.Tensor, ids: Sequence[str], aug: Augmentation,
            generator: torch.Generator | None = None, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """(B, N, D) reference features of the augmented ``images`` of the samples ``ids``.

        ``generator`` must draw the same patch positions as the prompted batch (``random_patch``);
        ``prompts`` are the prompted pass's instructions (used where the features depend on them).
        """
        if self.per_prompt and (prompts is None or len(prompts) != len(ids)):
            raise ValueError(f"FcaReferences.get: {self.kind} features of {self.adapter.name} need one prompt per "
                             "image")
        random_layout = self.blank.config.shape == "random_patch" and self.reference == "shrunk"
        if not aug.deterministic or self.budget <= 0 or random_layout:
            return self._compute(images, generator, prompts)
        texts = list(prompts) if self.per_prompt else [None] * len(ids)
        keys = list(zip(ids, aug.flipped.tolist(), texts, strict=True))
        missing = [j for j, key in enumerate(keys) if key not in self.cache]
        if missing:
            feats = self._compute(images[missing], prompts=[texts[j] for j in missing] if self.per_prompt else None)
            for j, f in zip(missing, feats, strict=True):
                size = f.numel() * f.element_size()
                if self.used + size <= self.budget:
                    # a copy: a row view would keep the whole batch alive (the budget counts rows), and
                    # under CUDA graphs (--compile reduce-overhead) the batch's memory is reused next replay
                    self.cache[keys[j]] = f.clone()
                    self.used += size
            if len(missing) == len(keys):
                return feats
            fresh = dict(zip(missing, feats, strict=True))
            return torch.stack([fresh[j] if j in fresh else self.cache[keys[j]] for j in range(len(keys))])
        return torch.stack([self.cache[key] for key in keys])


class TaskTexts:
    """All task texts of a run, encoded once by the guide; rows are looked up by text."""

    def __init__(self, guide: Any, texts: Sequence[str], chunk: int = 256) -> None:
        self.texts = sorted(set(texts))
        if not self.texts:
            raise UsageError("the task gives no TSE texts (no tse_text): pass --tse 0 or give the task a tse_text")
        self.row = {t: i for i, t in enumerate(self.texts)}
        with torch.no_grad():
            parts = [guide.encode_text(self.texts[i : i + chunk]) for i in range(0, len(self.texts), chunk)]
        self.embeddings = torch.cat(parts).detach()

    def labels(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.row[t] for t in texts], dtype=torch.long)


@dataclass
class Objective:
    """Computes the loss of one (local) batch; holds the models and their per-run caches."""

    sources: list[Any]
    spec: Any
    fca_weight: float
    tse_weight: float
    fca_features: str = "encoder"
    tse_form: str = "similarity"
    fca_distance: str = "squared"
    tse_scale_clamp: float = 0.0
    # set to a zero tensor of the frame's shape to accumulate Σ_b ∂L/∂x̃_b over the prompted images
    # (the released code normalises this full-frame gradient; ``grad_norm_over: frame``)
    frame_grad: torch.Tensor | None = None
    references: list[FcaReferences] | None = None
    guide: Any = None
    texts: TaskTexts | None = None

    def __call__(
        self, prompt: VisualPrompt, images: torch.Tensor, samples: Sequence[Any], aug: Augmentation,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {llm, fca, tse}) for augmented ``images`` of ``samples``; total is differentiable in δ.

        ``generator`` places a ``random_patch`` prompt (other shapes draw nothing).
        """
        spec = self.spec
        placement = generator.get_state() if generator is not None else None
        prompted = prompt.apply(images, generator=generator)
        if self.frame_grad is not None and prompted.requires_grad:
            prompted.register_hook(self._add_frame_grad)
        answers = [spec.answer_for(s) for s in samples]
        llms, fcas = [], []
        for k, adapter in enumerate(self.sources):
            pixels = prompted.to(adapter.device)
            prompts = [spec.prompt_for(s, adapter.family) for s in samples]
            if self.fca_weight > 0:
                llm, feats = adapter.lm_loss_with_features(pixels, prompts, answers, kind=self.fca_features)
                same = torch.Generator().set_state(placement) if placement is not None else None
                ref = self.references[k].get(images, [s.id for s in samples], aug, same, prompts)
                fcas.append(fca_loss(feats, ref, self.fca_distance).to(prompted.device))
            else:
                llm = adapter.lm_loss(pixels, prompts, answers)
            llms.append(llm.float().to(prompted.device))
        llm = torch.stack(llms).mean()
        fca = torch.stack(fcas).mean() if fcas else None
        tse = self._tse(prompted, samples) if self.tse_weight > 0 else None
        total = total_loss(llm, fca, tse, self.fca_weight, self.tse_weight)
        zero = torch.zeros((), device=prompted.device)
        terms = {"llm": llm.detach(), "fca": (fca if fca is not None else zero).detach(),
                 "tse": (tse if tse is not None else zero).detach()}
        return total, terms

    def _add_frame_grad(self, grad: torch.Tensor) -> None:
        assert self.frame_grad is not None
        self.frame_grad += grad.detach().sum(dim=0).to(self.frame_grad.device, self.frame_grad.dtype)

    def _tse(self, prompted: torch.Tensor, samples: Sequence[Any]) -> torch.Tensor | None:
        texts = [self.spec.tse_text_for(s) for s in samples]
        keep = [i for i, t in enumerate(texts) if t is not None]
        if not keep:
            return None
        pixels = prompted if len(keep) == len(texts) else prompted[keep]
        img = self.guide.encode_image(pixels.to(self.guide.device))
        labels = self.texts.labels([texts[i] for i in keep])
        return tse_loss(img, self.texts.embeddings, self.guide.logit_scale, form=self.tse_form, labels=labels,
                        scale_clamp=self.tse_scale_clamp).to(prompted.device)
