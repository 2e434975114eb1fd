"""The VP / EVP / TVP trainer, as named phases over one :class:`_Run`:

set-up (config -> resume -> data -> models -> prompt and objective) -> per update: ``update``
(augment, loss, all-reduce, update rule, project, log) -> ``validate_and_select`` ->
``checkpoint`` -> after the loop: ``write_out`` (the prompt files).

The three methods are configurations of this one loop (see :mod:`tvprompt.training.config`).
Only δ is trained: the models are frozen, so backward computes input gradients only.

Outputs under ``OUTPUT/``: ``prompt/`` (the prompt to use: best on validation, or the last one
when there is no validation), ``last/`` (δ after the final update), ``checkpoint/``,
``metrics.jsonl`` and, with ``report_to: [tensorboard]``, ``tensorboard/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
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
from .config import (
    LEGACY_DEFAULTS,
    PRESETS,
    RUNTIME_FIELDS,
    TrainConfig,
    absolute_paths,
    load_config_file,
    resolve_config,
    unapplied_preset,
)
from .distributed import World, init_world
from .objective import FcaReferences, Objective, TaskTexts
from .runlog import MetricsLog, interrupt_flag, log_every, progress_bar, step_line, validation_line
from .trackers import Trackers
from .updates import frame_normalized_step, lr_at, normalized_step, seed_for, sgd_momentum_step
from .validation import seeded_subset, source_name, validate

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
    "validate",
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
    """Train a prompt. Models, task and data are loaded from ``config`` unless passed in (tests, notebooks).

    Build ``config`` with :meth:`TrainConfig.from_preset` (or :func:`resolve_config`): a vp / evp config
    built directly with tvp's defaults is refused before anything is loaded."""
    stale = [] if resume else unapplied_preset(config)
    if stale:
        m = config.method
        raise UsageError(
            f"TrainConfig(method={m!r}) built directly keeps tvp's "
            f"{', '.join(f'{k}={getattr(config, k)!r}' for k in stale)}"
            f" instead of the {m} preset's: build it with TrainConfig.from_preset({m!r}, ...) (as `tvp train` does)"
            " or set these fields yourself")
    own_world = world is None
    world = world or init_world()
    run = _set_up(config, world, resume=resume, sources=sources, guide=guide, spec=spec,
                  train_set=train_set, val_set=val_set, batch_fn=batch_fn)
    if run.val_set is not None and run.cfg.val_every and not resume:
        run.validate(0)  # baseline: δ = 0 (recorded, never selected)
    run.loop()
    result = run.write_out()
    world.barrier()
    if own_world:
        world.close()
    return result


# ---------------------------------------------------------------- phase 1: set-up
def _set_up(config: TrainConfig, world: World, *, resume: bool, sources: Sequence[Any] | None, guide: Any,
            spec: Any, train_set: Any, val_set: Any, batch_fn: Callable[..., Iterator[Any]] | None) -> _Run:
    """Config (the checkpoint's when resuming) -> task and data -> models -> δ and the objective."""
    cfg, out = config, Path(config.output) if config.output else None
    state, rng = TrainState(), None
    _check_output(out, resume=resume, overwrite=cfg.overwrite)
    if resume:  # the checkpoint's config wins; result-affecting fields must not change
        if out is None:
            raise UsageError("--resume needs --output (the folder holding checkpoint/)")
        state, saved, rng_meta, rng_tensors = load_checkpoint(out)
        cfg, rng = _merge_resumed(cfg, saved), (rng_meta, rng_tensors)
    else:
        cfg = replace(cfg, **absolute_paths({"task": cfg.task, "data": cfg.data}))

    spec, train_set, val_set, batch_fn = _open_data(cfg, spec, train_set, val_set, batch_fn)
    batches_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = cfg.steps or max(1, math.ceil((cfg.epochs or 1.0) * batches_per_epoch / cfg.grad_accum))
    if world.is_main:
        log.info(
            "%s: %d updates of %d images (%d per micro-batch x %d), %d train / %s val samples, %d process(es)",
            cfg.method, total, cfg.batch_size * cfg.grad_accum, cfg.batch_size, cfg.grad_accum,
            len(train_set), len(val_set) if val_set is not None else "no", world.size,
        )

    sources = list(sources) if sources is not None else _load_sources(cfg, world)
    for adapter in sources:  # MiniGPT-4 / VPGTrans: the chat or the released prompt (training and ranking)
        if callable(getattr(adapter, "use_template", None)):
            adapter.use_template(cfg.minigpt4_template)
    if cfg.tse > 0 and guide is None:
        from ..models.registry import load_guide

        guide = load_guide(cfg.guide, device=cfg.device or world.device or sources[0].device, dtype=cfg.dtype)
    if cfg.compile != "off":
        _compile_models(cfg.compile, sources, guide if cfg.tse > 0 else None)
    device = torch.device(cfg.device) if cfg.device else (world.device or sources[0].device)
    if cfg.num_workers is None:
        from ..data.batching import default_workers

        cfg = replace(cfg, num_workers=default_workers(device))

    prompt = VisualPrompt(_prompt_config(cfg)).to(device)
    momentum, best_delta = torch.zeros_like(prompt.delta), None
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
        fca_distance=cfg.fca_distance, tse_scale_clamp=cfg.tse_scale_clamp,
    )
    if cfg.fca > 0:
        objective.references = [
            FcaReferences(a, prompt, cfg.fca_features, cfg.fca_reference, cfg.fca_cache_mb) for a in sources
        ]
    if cfg.tse > 0:
        objective.texts = TaskTexts(guide, _task_texts(spec, train_set))
        if world.is_main:
            log.info("TSE (λ2 %g): %d task text(s) from %r, e.g. %r", cfg.tse, len(objective.texts.texts),
                     getattr(spec, "tse_text", "?"), objective.texts.texts[0])
    elif cfg.method == "tvp" and world.is_main:
        log.warning("tvp with --tse 0: TSE is off, the prompt is trained with L_LLM%s only",
                    " + FCA" if cfg.fca > 0 else "")
    metrics = MetricsLog(out, state.step if resume else 0) if (out and world.is_main) else None
    trackers = None
    if cfg.report_to and world.is_main:
        trackers = Trackers(cfg.report_to, out, run_name=out.name if out else "tvprompt", config=cfg.to_dict())
    return _Run(cfg=cfg, out=out, world=world, spec=spec, train_set=train_set, val_set=val_set, batch_fn=batch_fn,
                sources=sources, device=device, total=total, batches_per_epoch=batches_per_epoch, prompt=prompt,
                objective=objective, state=state, momentum=momentum, best_delta=best_delta, metrics=metrics,
                trackers=trackers,
                saved_step=state.step if resume else None)


def _open_data(cfg: TrainConfig, spec: Any, train_set: Any, val_set: Any,
               batch_fn: Callable[..., Iterator[Any]] | None) -> tuple[Any, Any, Any, Callable[..., Iterator[Any]]]:
    """The task, the training and validation sets (a seeded subset when capped) and the batcher."""
    if spec is None:
        from ..tasks import load_task

        spec = load_task(cfg.task)
        if cfg.tse_template is not None:
            spec = dataclasses.replace(spec, tse_text=cfg.tse_template)  # checks its placeholders
        if cfg.tse > 0 and not spec.tse_text:  # fail before loading any model
            raise UsageError(f"task {spec.name!r} has no tse_text, so TSE (--tse {cfg.tse:g}) has nothing to match: "
                             "pass --tse 0 (TVP with FCA only) or give the task a tse_text")
    elif cfg.tse_template is not None:
        if not dataclasses.is_dataclass(spec):
            raise UsageError("tse_template needs a task spec (TaskSpec) to render it")
        spec = dataclasses.replace(spec, tse_text=cfg.tse_template)
    if train_set is None:
        from ..data import open_dataset

        train_set = open_dataset(spec, cfg.data, cfg.train_split, seed=cfg.seed)
        if cfg.val_split:
            val_set = open_dataset(spec, cfg.data, cfg.val_split, seed=cfg.seed)
    if batch_fn is None:
        from ..data import iter_batches as batch_fn
    if len(train_set) == 0:
        raise TvpError(f"{cfg.data}: the {cfg.train_split!r} split is empty")
    _check_readable(train_set, cfg)
    if val_set is not None and cfg.val_max_samples and len(val_set) > cfg.val_max_samples:
        val_set = seeded_subset(val_set, cfg.val_max_samples, cfg.seed)
    if not cfg.val_split:
        val_set = None
    return spec, train_set, val_set, batch_fn


@dataclass(eq=False)
class _Run:
    """One run's models, data and mutable state; its methods are the phases after set-up."""

    cfg: TrainConfig
    out: Path | None
    world: World
    spec: Any
    train_set: Any
    val_set: Any
    batch_fn: Callable[..., Iterator[Any]]
    sources: list[Any]
    device: torch.device
    total: int
    batches_per_epoch: int
    prompt: VisualPrompt
    objective: Objective
    state: TrainState
    momentum: torch.Tensor
    best_delta: torch.Tensor | None
    metrics: MetricsLog | None
    trackers: Trackers | None
    saved_step: int | None  # the step of the newest checkpoint on disk (None: none written)
    history: list[dict[str, Any]] = field(default_factory=list)

    def log_row(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.metrics:
            self.metrics.write(row)
        if self.trackers:
            self.trackers.log(row)

    # ------------------------------------------------------------ the loop
    def loop(self) -> None:
        """Updates from the state's step to the end; validates, checkpoints, stops early or on Ctrl-C."""
        cfg, state = self.cfg, self.state
        data = _micro_batches(self.train_set, cfg, state, self.batch_fn)
        bar = progress_bar(self.total, state.step, enabled=cfg.progress and self.world.is_main)
        # no bar (not a terminal, or --no-progress): a log line every few steps instead
        lines = self.world.is_main and bar.disable
        every = log_every(self.total)
        if cfg.early_stop and state.bad_validations >= cfg.early_stop:  # resuming a run that had stopped early
            self.total = state.step
        with interrupt_flag() as interrupted:
            try:
                for step in range(state.step, self.total):
                    row = self.update(step, data)
                    bar.update(1)
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "llm", "fca", "tse")
                                     if k == "loss" or row[k]})
                    if lines and (row["step"] % every == 0 or row["step"] == self.total):
                        log.info("%s", step_line(row))
                    if self._stop_after_update(interrupted):
                        break
            finally:
                bar.close()
                if self.metrics:
                    self.metrics.close()
                if self.trackers:
                    self.trackers.close()

    def _stop_after_update(self, interrupted: threading.Event) -> bool:
        """Validation, selection and checkpoint after an update; True to end the loop early."""
        cfg, state = self.cfg, self.state
        last = state.step == self.total
        stop_reason = None
        if self.val_set is not None and ((cfg.val_every and state.step % cfg.val_every == 0) or last):
            stop_reason = self.validate_and_select()
        if (cfg.ckpt_every and state.step % cfg.ckpt_every == 0) or last or stop_reason:
            self.checkpoint()
        if stop_reason:
            log.info("%s (step %d, best %.4f at step %s)", stop_reason, state.step, state.best_metric, state.best_step)
            return True
        if _any_process(interrupted.is_set(), self.world):
            self.checkpoint()
            raise TrainingInterrupted(
                f"interrupted at step {state.step}/{self.total}; checkpoint saved in {self.out}; rerun with --resume "
                "to continue"
                if self.out else f"interrupted at step {state.step}/{self.total}"
            )
        return False

    # ------------------------------------------------------------ phase 2: one update
    def update(self, step: int, data: Iterator[Any]) -> dict[str, Any]:
        """Accumulate the gradient over the micro-batches, all-reduce it, apply the update rule, log."""
        cfg, prompt, world = self.cfg, self.prompt, self.world
        lr = lr_at(step, cfg, self.total, max(1, self.batches_per_epoch // cfg.grad_accum))
        terms = torch.zeros(4, dtype=torch.float64, device=self.device)  # total, llm, fca, tse
        frame = cfg.grad_norm_over == "frame" and cfg.update == "normalized"
        if frame:
            self.objective.frame_grad = torch.zeros_like(prompt.delta)
        for micro in range(cfg.grad_accum):
            batch = next(data)
            gen = torch.Generator().manual_seed(seed_for(cfg.seed, "augment", step, micro))
            images, aug = augment(
                batch.images.to(self.device, non_blocking=True), gen, flip=cfg.flip, scale=cfg.jitter_scale,
                translate=cfg.jitter_translate
            )
            n_global = images.shape[0]
            part = world.shard(n_global)
            n_local = part.stop - part.start
            if n_local == 0:
                continue
            if world.size > 1:
                aug = replace(aug, flipped=aug.flipped[part])
            place = torch.Generator().manual_seed(seed_for(cfg.seed, "place", step, micro, world.rank))
            loss, parts = self.objective(prompt, images[part], list(batch.samples)[part], aug, place)
            weight = n_local / (n_global * cfg.grad_accum)
            (loss * weight if weight != 1.0 else loss).backward()
            terms += torch.stack([loss.detach(), parts["llm"], parts["fca"], parts["tse"]]).double() * weight
        grad = prompt.delta.grad if prompt.delta.grad is not None else torch.zeros_like(prompt.delta)
        world.all_reduce_sum(grad)
        world.all_reduce_sum(terms)
        if not (torch.isfinite(terms).all() and torch.isfinite(grad).all()):
            where = ("none written" if self.saved_step is None
                     else f"{self.out / 'checkpoint'} (step {self.saved_step})")
            raise NonFiniteLoss(
                f"step {step + 1}: the loss or its gradient is not finite (loss={terms[0].item():.4g}, "
                f"llm={terms[1].item():.4g}, fca={terms[2].item():.4g}, tse={terms[3].item():.4g}); "
                f"stopped. Last good checkpoint: {where}. Lower --lr, check the data, or use float32"
            )
        mask = prompt.mask
        with torch.no_grad():
            if cfg.update == "sgd":
                new, self.momentum = sgd_momentum_step(prompt.delta, grad * mask, self.momentum, lr, cfg.momentum)
            elif frame:
                full = self.objective.frame_grad
                world.all_reduce_sum(full)
                new = frame_normalized_step(prompt.delta, full, mask, lr)
                self.objective.frame_grad = None
            else:
                new = normalized_step(prompt.delta, grad, mask, lr)
            prompt.delta.copy_(new)
            prompt.project_()
        prompt.delta.grad = None
        self.state.step = step + 1
        row = {"step": self.state.step, "total_steps": self.total, "loss": terms[0].item(), "llm": terms[1].item(),
               "fca": terms[2].item(), "tse": terms[3].item(), "lr": lr, "grad_norm": (grad * mask).norm().item()}
        self.log_row(row)
        return row

    # ------------------------------------------------------------ phase 3: validation and selection
    def validate(self, step: int) -> dict[str, float]:
        result = validate(self.prompt, self.sources, self.spec, self.val_set, self.cfg, self.batch_fn, self.world)
        row = {"step": step, "total_steps": self.total, "split": self.cfg.val_split, **result}
        self.log_row(row)
        if self.world.is_main:
            log.info("%s", validation_line(row))
        return result

    def validate_and_select(self) -> str | None:
        """Validate the current δ, keep it when it is the best so far; the early-stop reason, if any."""
        state = self.state
        result = self.validate(state.step)
        if state.best_metric is None or result["accuracy"] > state.best_metric:
            state.best_metric, state.best_step, state.bad_validations = result["accuracy"], state.step, 0
            self.best_delta = self.prompt.delta.detach().clone()
            return None
        state.bad_validations += 1
        if self.cfg.early_stop and state.bad_validations >= self.cfg.early_stop:
            return f"early stop: no better validation accuracy for {self.cfg.early_stop} validations"
        return None

    # ------------------------------------------------------------ phase 4: checkpoint
    def checkpoint(self) -> None:
        if self.out is None:
            return
        state = self.state
        self.saved_step = state.step
        state.tensors = {"delta": self.prompt.delta.detach(), "momentum": self.momentum}
        if self.best_delta is not None:
            state.tensors["best_delta"] = self.best_delta
        if self.world.is_main:
            save_checkpoint(self.out, state, self.cfg.to_dict())
        self.world.barrier()

    # ------------------------------------------------------------ phase 5: final write-out
    def write_out(self) -> TrainResult:
        """The selected prompt (best on validation, else the last δ) and the last δ, stamped with provenance."""
        cfg, state, out, prompt = self.cfg, self.state, self.out, self.prompt
        if state.step == self.total and out is not None and not has_checkpoint(out):
            self.checkpoint()  # a resumed run that was already finished, or a zero-length loop
        final = prompt.delta.detach().to("cpu", torch.float32).clone()
        selected = VisualPrompt(prompt.config)
        with torch.no_grad():
            selected.delta.copy_((self.best_delta if self.best_delta is not None else prompt.delta).detach().cpu())
        last_val = next((r for r in reversed(self.history) if "accuracy" in r), None)
        _stamp(selected.config, cfg, self.spec, self.sources, self.train_set, self.val_set, state, last_val)
        if out is not None and self.world.is_main:
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
        return TrainResult(out, state.step, state.best_metric, state.best_step, final, selected, self.history)


# ---------------------------------------------------------------- helpers
def _check_output(out: Path | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any model loads, an --output that is a file or holds an earlier run's results."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: is a file; give a folder (it will hold prompt/, checkpoint/, metrics.jsonl)")
    if resume or overwrite:
        return
    if has_checkpoint(out):
        raise UsageError(f"--output {out}: holds a checkpoint of an earlier run; pass --resume to continue it, "
                         "--overwrite to start again, or pick a new --output")
    if (out / "prompt").exists():
        raise UsageError(f"--output {out}: holds prompt/ of an earlier run; pass --overwrite to replace it "
                         "or pick a new --output")


def _check_readable(dataset: Any, cfg: TrainConfig) -> None:
    """At least one training image decodes (checked before any model loads); stops at the first that does."""
    load = getattr(dataset, "load_image", None)
    if load is None:
        return
    first = None
    for i in range(len(dataset)):
        try:
            load(i)
            return
        except (TvpError, OSError, ValueError) as e:
            first = first or str(e).splitlines()[0]
    raise TvpError(f"{cfg.data}: none of the {len(dataset)} images of the {cfg.train_split!r} split is readable "
                   f"(first: {first})")


def _micro_batches(dataset: Any, cfg: TrainConfig, state: TrainState, batch_fn: Callable) -> Iterator[Any]:
    """Endless training batches from the state's data position; advances the position as it yields."""
    while True:
        for batch in batch_fn(
            dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, **cfg.image_options(),
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
        method=cfg.method, fit=cfg.image_fit, resample=cfg.image_resample,
    )


def _stamp(pc: PromptConfig, cfg: TrainConfig, spec: Any, sources: Sequence[Any], train_set: Any,
           val_set: Any, state: TrainState, last_val: dict[str, Any] | None) -> None:
    """Provenance in the prompt's config: resolved hyper-parameters, sources, task, data, metrics."""
    pc.method = cfg.method
    pc.hyperparameters = cfg.hyperparameters()
    pc.sources = [{"model_id": getattr(a, "model_id", str(m)), "family": getattr(a, "family", None),
                   "name": source_name(a, k)}
                  for k, (a, m) in enumerate(zip(sources, cfg.sources or [None] * len(sources), strict=False))]
    pc.task = getattr(spec, "name", None) or cfg.task
    choices = getattr(spec, "choices", None)
    pc.choices = list(choices) if choices else None
    spec_dict = spec.to_dict() if hasattr(spec, "to_dict") else {}
    pc.templates = {k: spec_dict[k] for k in ("instruction", "instruction_by_family", "answer", "tse_text")
                    if k in spec_dict}
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
    saved = {**LEGACY_DEFAULTS, **saved}
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
        log.info("%s: compiled %d transformer blocks (mode %s); the first steps include compile time", name, count,
                 mode)


def _load_sources(cfg: TrainConfig, world: World) -> list[Any]:
    from ..models.registry import load_adapter

    if cfg.device_map:
        devices = [cfg.device_map] * len(cfg.sources)  # "auto": accelerate spreads each model
    elif cfg.source_devices:
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
        load_adapter(m, device=d, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                     revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        for m, d in zip(cfg.sources, devices, strict=True)
    ]
