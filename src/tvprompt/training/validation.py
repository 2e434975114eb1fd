"""Validation during training: ranking accuracy of the prompted images on the source models."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..data.splits import SALT_VAL_SUBSET
from ..data.subset import stratified_subset
from ..prompt import VisualPrompt
from .config import TrainConfig
from .distributed import World


@torch.no_grad()
def validate(
    prompt: VisualPrompt, sources: Sequence[Any], spec: Any, dataset: Any, cfg: TrainConfig,
    batch_fn: Callable[..., Iterator[Any]], world: World | None = None,
) -> dict[str, float]:
    """Ranking accuracy of the prompted images on ``dataset`` for each source (and their mean).

    Each choice is scored by the adapter's mean per-token log-likelihood; batches are dealt out
    round-robin over processes and the counts summed.
    """
    world = world or World()
    device = prompt.delta.device
    counts = torch.zeros(len(sources) + 1, dtype=torch.float64)  # correct per source, then total
    bs = cfg.val_batch_size or cfg.batch_size
    batches = batch_fn(dataset, bs, shuffle=False, seed=cfg.seed, num_workers=cfg.num_workers, **cfg.image_options())
    for i, batch in enumerate(batches):
        if i % world.size != world.rank:
            continue
        samples = list(batch.samples)
        pixels = prompt.apply(batch.images.to(device))
        labels = torch.tensor([spec.label_index(s) for s in samples])
        groups: dict[tuple[str, ...], list[int]] = {}
        for j, s in enumerate(samples):  # samples may carry their own answer sets (POPE, manifests)
            groups.setdefault(tuple(spec.choice_texts_for(s)), []).append(j)
        for k, adapter in enumerate(sources):
            pred = torch.empty(len(samples), dtype=torch.long)
            for choices, rows in groups.items():
                prompts = [spec.prompt_for(samples[j], adapter.family) for j in rows]
                scores = adapter.score_choices(pixels[rows].to(adapter.device), prompts, list(choices))
                pred[rows] = scores.float().argmax(dim=-1).cpu()
            counts[k] += (pred == labels).sum().item()
        counts[-1] += len(samples)
    world.all_reduce_sum(counts)
    n = max(counts[-1].item(), 1.0)
    per_source = [counts[k].item() / n for k in range(len(sources))]
    result = {"accuracy": sum(per_source) / len(per_source), "samples": int(counts[-1].item())}
    if len(sources) > 1:
        result.update({f"accuracy/{source_name(a, k)}": v
                       for k, (a, v) in enumerate(zip(sources, per_source, strict=True))})
    return result


def source_name(adapter: Any, k: int) -> str:
    return getattr(adapter, "name", None) or f"source{k}"


def seeded_subset(dataset: Any, n: int, seed: int) -> Any:
    """``n`` rows of ``dataset``, stratified by class and drawn with ``seed`` (kept in dataset order)."""
    return stratified_subset(dataset, n, seed, SALT_VAL_SUBSET)
