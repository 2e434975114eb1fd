"""The VP / EVP / TVP trainer. Reads top to bottom like nanoGPT's ``train.py``:

config (preset -> file -> flags) -> derived values -> data -> models -> init (scratch | resume)
-> loop (augment, loss, all-reduce, update, project, log, validate, checkpoint) -> prompt files.

The three methods are configurations of this one loop (see :mod:`tvprompt.training.config`).
Only δ is trained: the models are frozen, so backward computes input gradients only.

Outputs under ``OUTPUT/``: ``prompt/`` (the prompt to use: best on validation, or the last one
when there is no validation), ``last/`` (δ after the final update), ``checkpoint/``,
``metrics.jsonl`` and optionally ``tensorboard/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import TvpError, UsageError
from ..files import write_text_atomic
from ..prompt import PromptConfig, VisualPrompt
from .augment import augment
from .checkpoint import TrainState, has_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .config import PRESETS, RUNTIME_FIELDS, TrainConfig, load_config_file, resolve_config
from .distributed import World, init_world
from .objective import FcaReferences, Objective, TaskTexts
from .runlog import MetricsLog, interrupt_flag, progress_bar

__all__ = [
    "PRESETS",
    "NonFiniteLoss",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "load_config_file",
    "lr_at",
    "normalized_step",
    "resolve_config",
    "sgd_momentum_step",
    "train",
]

log = logging.getLogger(__name__)


class NonFiniteLoss(TvpError):
    """The loss or the gradient became NaN/inf; the run stopped and the last good checkpoint is kept."""


class TrainingInterrupted(TvpError):
    """Ctrl-C: a checkpoint was written; ``--resume`` continues."""

    exit_code = 130


@dataclass
class TrainResult:
    output: Path | None
    step: int
    best_metric: float | None
    best_step: int | None
    delta: torch.Tensor  # the final δ (CPU, float32)
    prompt: VisualPrompt  # the selected prompt (best on validation, else last)
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- schedule and update rules (pure)
def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate (or step size γ) for update ``step`` (0-based) of ``total_steps``."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
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


def _seed_for(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs and processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# ---------------------------------------------------------------- the run
def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    sources: Sequence[Any] | None = None,
    guide: Any = None,
    spec: Any = None,
    train_set: Any = None,
    val_set: Any = None,
    batch_fn: Callable[..., Iterator[Any]] | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train a prompt. Models, task and data are loaded from ``config`` unless passed in (tests, notebooks)."""
    cfg = config
    out = Path(cfg.output) if cfg.output else None
    own_world = world is None
    world = world or init_world()

    # ---- resume: the checkpoint's config wins; result-affecting fields must not change
    state = TrainState()
    rng = None
    if resume:
        if out is None:
            raise UsageError("--resume needs --output (the folder holding checkpoint/)")
        state, saved, rng_meta, rng_tensors = load_checkpoint(out)
        cfg = _merge_resumed(cfg, saved)
        rng = (rng_meta, rng_tensors)
    elif out is not None and has_checkpoint(out):
        raise UsageError(f"{out}: holds a checkpoint of an earlier run; pass --resume to continue it or pick a new --output")

    # ---- data and task
    if spec is None:
        from ..tasks import load_task

        spec = load_task(cfg.task)
        if cfg.tse > 0 and not spec.tse_text:  # fail before loading any model
            raise UsageError(f"task {spec.name!r} has no tse_text, so TSE (--tse {cfg.tse:g}) has nothing to match: "
                             "pass --tse 0 (TVP with FCA only) or give the task a tse_text")
    if train_set is None:
        from ..data import open_dataset

        train_set = open_dataset(spec, cfg.data, cfg.train_split, seed=cfg.seed)
        if cfg.val_split:
            val_set = open_dataset(spec, cfg.data, cfg.val_split, seed=cfg.seed)
    if batch_fn is None:
        from ..data import iter_batches as batch_fn
    if len(train_set) == 0:
        raise TvpError(f"{cfg.data}: the {cfg.train_split!r} split is empty")
    if val_set is not None and cfg.val_max_samples and len(val_set) > cfg.val_max_samples:
        val_set = _subset(val_set, cfg.val_max_samples, cfg.seed)
    if not cfg.val_split:
        val_set = None

    # ---- derived values
    batches_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = cfg.steps or max(1, math.ceil((cfg.epochs or 1.0) * batches_per_epoch / cfg.grad_accum))
    if world.is_main:
        log.info(
            "%s: %d updates of %d images (%d per micro-batch x %d), %d train / %s val samples, %d process(es)",
            cfg.method, total, cfg.batch_size * cfg.grad_accum, cfg.batch_size, cfg.grad_accum,
            len(train_set), len(val_set) if val_set is not None else "no", world.size,
        )

    # ---- models
    if sources is None:
        sources = _load_sources(cfg, world)
    sources = list(sources)
    if cfg.tse > 0 and guide is None:
        from ..models.registry import load_guide

        guide = load_guide(cfg.guide, device=cfg.device or world.device or sources[0].device, dtype=cfg.dtype)
    if cfg.compile != "off":
        _compile_models(cfg.compile, sources, guide if cfg.tse > 0 else None)
    device = torch.device(cfg.device) if cfg.device else (world.device or sources[0].device)
    if cfg.num_workers is None:
        from ..data.batching import default_workers

        cfg = replace(cfg, num_workers=default_workers(device))

    # ---- init (scratch | resume)
    prompt = VisualPrompt(_prompt_config(cfg)).to(device)
    mask = prompt.mask
    momentum = torch.zeros_like(prompt.delta)
    best_delta = None
    if resume:
        with torch.no_grad():
            prompt.delta.copy_(state.tensors["delta"].to(device))
        if "momentum" in state.tensors:
            momentum = state.tensors["momentum"].to(device)
        if "best_delta" in state.tensors:
            best_delta = state.tensors["best_delta"].to(device)
    else:
        torch.manual_seed(cfg.seed)  # the global RNGs matter only to models that draw (none should)
    if rng is not None:
        restore_rng(*rng)

    objective = Objective(
        sources=sources, spec=spec, fca_weight=cfg.fca, tse_weight=cfg.tse,
        fca_features=cfg.fca_features, tse_form=cfg.tse_form, guide=guide,
    )
    if cfg.fca > 0:
        objective.references = [
            FcaReferences(a, prompt, cfg.fca_features, cfg.fca_reference, cfg.fca_cache_mb) for a in sources
        ]
    if cfg.tse > 0:
        objective.texts = TaskTexts(guide, _task_texts(spec, train_set))

    metrics = MetricsLog(out, state.step if resume else 0, cfg.tensorboard) if (out and world.is_main) else None
    history: list[dict[str, Any]] = []

    def log_row(row: dict[str, Any]) -> None:
        history.append(row)
        if metrics:
            metrics.write(row)

    saved_step = state.step if resume else None

    def checkpoint() -> None:
        nonlocal saved_step
        if out is None:
            return
        saved_step = state.step
        state.tensors = {"delta": prompt.delta.detach(), "momentum": momentum}
        if best_delta is not None:
            state.tensors["best_delta"] = best_delta
        if world.is_main:
            save_checkpoint(out, state, cfg.to_dict())
        world.barrier()

    def run_validation(step: int) -> dict[str, float]:
        result = validate(prompt, sources, spec, val_set, cfg, batch_fn, world)
        log_row({"step": step, "total_steps": total, "split": cfg.val_split, **result})
        return result

    if val_set is not None and cfg.val_every and not resume:
        run_validation(0)  # baseline: δ = 0 (recorded, never selected)

    data = _micro_batches(train_set, cfg, state, batch_fn)
    bar = progress_bar(total, state.step, enabled=cfg.progress and world.is_main)
    stop_reason = None
    if cfg.early_stop and state.bad_validations >= cfg.early_stop:  # resuming a run that had stopped early
        total = state.step
    with interrupt_flag() as interrupted:
        try:
            for step in range(state.step, total):
                lr = lr_at(step, cfg, total)
                terms = torch.zeros(4, dtype=torch.float64, device=device)  # total, llm, fca, tse
                for micro in range(cfg.grad_accum):
                    batch = next(data)
                    gen = torch.Generator().manual_seed(_seed_for(cfg.seed, "augment", step, micro))
                    images, aug = augment(
                        batch.images.to(device, non_blocking=True), gen, flip=cfg.flip, scale=cfg.jitter_scale, translate=cfg.jitter_translate
                    )
                    n_global = images.shape[0]
                    part = world.shard(n_global)
                    n_local = part.stop - part.start
                    if n_local == 0:
                        continue
                    if world.size > 1:
                        aug = replace(aug, flipped=aug.flipped[part])
                    place = torch.Generator().manual_seed(_seed_for(cfg.seed, "place", step, micro, world.rank))
                    loss, parts = objective(prompt, images[part], list(batch.samples)[part], aug, place)
                    weight = n_local / (n_global * cfg.grad_accum)
                    (loss * weight if weight != 1.0 else loss).backward()
                    terms += torch.stack([loss.detach(), parts["llm"], parts["fca"], parts["tse"]]).double() * weight
                grad = prompt.delta.grad if prompt.delta.grad is not None else torch.zeros_like(prompt.delta)
                world.all_reduce_sum(grad)
                world.all_reduce_sum(terms)
                if not (torch.isfinite(terms).all() and torch.isfinite(grad).all()):
                    where = f"{out / 'checkpoint'} (step {saved_step})" if saved_step is not None else "none written"
                    raise NonFiniteLoss(
                        f"step {step + 1}: the loss or its gradient is not finite (loss={terms[0].item():.4g}, "
                        f"llm={terms[1].item():.4g}, fca={terms[2].item():.4g}, tse={terms[3].item():.4g}); "
                        f"stopped. Last good checkpoint: {where}. Lower --lr, check the data, or use float32"
                    )
                with torch.no_grad():
                    if cfg.update == "sgd":
                        new, momentum = sgd_momentum_step(prompt.delta, grad * mask, momentum, lr, cfg.momentum)
                    else:
                        new = normalized_step(prompt.delta, grad, mask, lr)
                    prompt.delta.copy_(new)
                    prompt.project_()
                prompt.delta.grad = None
                state.step = step + 1

                row = {"step": state.step, "total_steps": total, "loss": terms[0].item(), "llm": terms[1].item(),
                       "fca": terms[2].item(), "tse": terms[3].item(), "lr": lr, "grad_norm": (grad * mask).norm().item()}
                log_row(row)
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "llm", "fca", "tse") if k == "loss" or row[k]})

                last = state.step == total
                if val_set is not None and ((cfg.val_every and state.step % cfg.val_every == 0) or last):
                    result = run_validation(state.step)
                    if state.best_metric is None or result["accuracy"] > state.best_metric:
                        state.best_metric, state.best_step, state.bad_validations = result["accuracy"], state.step, 0
                        best_delta = prompt.delta.detach().clone()
                    else:
                        state.bad_validations += 1
                        if cfg.early_stop and state.bad_validations >= cfg.early_stop:
                            stop_reason = f"early stop: no better validation accuracy for {cfg.early_stop} validations"
                if (cfg.ckpt_every and state.step % cfg.ckpt_every == 0) or last or stop_reason:
                    checkpoint()
                if stop_reason:
                    log.info("%s (step %d, best %.4f at step %s)", stop_reason, state.step, state.best_metric, state.best_step)
                    break
                if _any_process(interrupted.is_set(), world):
                    checkpoint()
                    raise TrainingInterrupted(
                        f"interrupted at step {state.step}/{total}; checkpoint saved in {out}; rerun with --resume to continue"
                        if out else f"interrupted at step {state.step}/{total}"
                    )
        finally:
            bar.close()
            if metrics:
                metrics.close()

    if state.step == total and out is not None and not has_checkpoint(out):
        checkpoint()  # a resumed run that was already finished, or a zero-length loop
    final = prompt.delta.detach().to("cpu", torch.float32).clone()
    selected = VisualPrompt(prompt.config)
    with torch.no_grad():
        selected.delta.copy_((best_delta if best_delta is not None else prompt.delta).detach().cpu())
    last_val = next((r for r in reversed(history) if "accuracy" in r), None)
    _stamp(selected.config, cfg, spec, sources, train_set, val_set, state, last_val)
    if out is not None and world.is_main:
        last_metrics = {"steps": state.step}
        if last_val is not None:
            last_metrics["val_accuracy"] = last_val["accuracy"]
        last_prompt = VisualPrompt(replace(selected.config, metrics=last_metrics))
        with torch.no_grad():
            last_prompt.delta.copy_(final)
        last_prompt.save_pretrained(out / "last")
        selected.save_pretrained(out / "prompt")
        write_text_atomic(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        log.info("wrote %s (selected at step %s)", out / "prompt", state.best_step or state.step)
    world.barrier()
    if own_world:
        world.close()
    return TrainResult(out, state.step, state.best_metric, state.best_step, final, selected, history)


# ---------------------------------------------------------------- validation
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
    batches = batch_fn(dataset, bs, shuffle=False, seed=cfg.seed, image_size=cfg.image_size, num_workers=cfg.num_workers)
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
        result.update({f"accuracy/{_source_name(a, k)}": v for k, (a, v) in enumerate(zip(sources, per_source, strict=True))})
    return result


# ---------------------------------------------------------------- helpers
def _micro_batches(dataset: Any, cfg: TrainConfig, state: TrainState, batch_fn: Callable) -> Iterator[Any]:
    """Endless training batches from the state's data position; advances the position as it yields."""
    while True:
        for batch in batch_fn(
            dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, image_size=cfg.image_size,
            start=state.batch_in_epoch, epoch=state.epoch, num_workers=cfg.num_workers,
        ):
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


def _any_process(flag: bool, world: World) -> bool:
    """True on every process when ``flag`` is set on any (so all stop at the same step)."""
    if world.size == 1:
        return flag
    return bool(world.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def _subset(dataset: Any, n: int, seed: int) -> Any:
    g = torch.Generator().manual_seed(_seed_for(seed, "val-subset"))
    rows = sorted(torch.randperm(len(dataset), generator=g)[:n].tolist())
    return _Subset(dataset, rows)


class _Subset:
    """A fixed selection of a dataset's rows (sized and indexable, like the dataset)."""

    def __init__(self, dataset: Any, rows: list[int]) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.rows[i]]


def _task_texts(spec: Any, dataset: Any) -> list[str]:
    """Every TSE text of the task: one per choice when the spec defines them, plus every text of the
    training split (collected once, before training, from the samples without loading images)."""
    samples = getattr(dataset, "samples", None)
    rows = samples if samples is not None else (dataset[i] for i in range(len(dataset)))
    texts = list(spec.tse_texts() or [])
    return texts + [t for t in (spec.tse_text_for(s) for s in rows) if t is not None]


def _prompt_config(cfg: TrainConfig) -> PromptConfig:
    return PromptConfig(
        shape=cfg.shape, image_height=cfg.image_size, image_width=cfg.image_size,
        prompt_width=cfg.width, patch_size=cfg.patch_size, epsilon=cfg.epsilon, clamp=cfg.clamp, seed=cfg.seed,
        method=cfg.method,
    )


def _source_name(adapter: Any, k: int) -> str:
    return getattr(adapter, "name", None) or f"source{k}"


def _stamp(pc: PromptConfig, cfg: TrainConfig, spec: Any, sources: Sequence[Any], train_set: Any,
           val_set: Any, state: TrainState, last_val: dict[str, Any] | None) -> None:
    """Provenance in the prompt's config: resolved hyper-parameters, sources, task, data, metrics."""
    pc.method = cfg.method
    pc.hyperparameters = cfg.hyperparameters()
    pc.sources = [{"model_id": getattr(a, "model_id", str(m)), "family": getattr(a, "family", None),
                   "name": _source_name(a, k)} for k, (a, m) in enumerate(zip(sources, cfg.sources or [None] * len(sources), strict=False))]
    pc.task = getattr(spec, "name", None) or cfg.task
    choices = getattr(spec, "choices", None)
    pc.choices = list(choices) if choices else None
    spec_dict = spec.to_dict() if hasattr(spec, "to_dict") else {}
    pc.templates = {k: spec_dict[k] for k in ("instruction", "instruction_by_family", "answer", "tse_text") if k in spec_dict}
    pc.data = {"path": cfg.data, "train_split": cfg.train_split, "train_samples": len(train_set),
               "val_split": cfg.val_split if val_set is not None else None,
               "val_samples": len(val_set) if val_set is not None else 0}
    if state.best_step is not None:
        pc.metrics = {"val_accuracy": state.best_metric, "selected_step": state.best_step, "steps": state.step}
    else:
        pc.metrics = {"selected_step": state.step, "steps": state.step}
    if last_val is not None:
        pc.metrics["last_val_accuracy"] = last_val["accuracy"]


def _merge_resumed(flags_cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The checkpoint's config, with runtime-only options from the current call."""
    saved_cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    runtime = {k: getattr(flags_cfg, k) for k in RUNTIME_FIELDS if getattr(flags_cfg, k) not in (None, [])}
    return replace(saved_cfg, **runtime)


def _compile_models(mode: str, sources: Sequence[Any], guide: Any) -> None:
    """Regional torch.compile of each source (and the guide) that supports it; the others stay eager."""
    for k, model in enumerate([*sources, *([guide] if guide is not None else [])]):
        name = getattr(model, "model_id", None) or f"source{k}"
        if not callable(getattr(model, "compile", None)):
            log.warning("%s: has no compile(); runs eagerly", name)
            continue
        count = model.compile(mode)
        log.info("%s: compiled %d transformer blocks (mode %s); the first steps include compile time", name, count, mode)


def _load_sources(cfg: TrainConfig, world: World) -> list[Any]:
    from ..models.registry import load_adapter

    if cfg.source_devices:
        devices = list(cfg.source_devices)
    elif world.device is not None and world.size > 1:
        devices = [str(world.device)] * len(cfg.sources)
    elif cfg.device:
        devices = [cfg.device] * len(cfg.sources)
    elif torch.cuda.is_available():
        n = torch.cuda.device_count()
        devices = [f"cuda:{k % n}" for k in range(len(cfg.sources))]
    else:
        devices = ["cpu"] * len(cfg.sources)
    return [
        load_adapter(m, device=d, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing)
        for m, d in zip(cfg.sources, devices, strict=True)
    ]
