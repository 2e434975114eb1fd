"""Transfer evaluation: every (no prompt | each prompt) × model cell -> per-sample records + metrics.

Closed answer sets are ranked by likelihood (``adapter.score_choices``, one batched call for the
clean pass and every prompted pass together); open tasks use greedy generation and a normalised
exact match. Each finished cell is written to ``OUTPUT/cells/`` at once with a fingerprint of
everything it depends on (task, data, split, limit, seed, prompt bytes, model files, tvprompt
version); a rerun reuses a cell only when its fingerprint matches, so nothing stale is reused.
Models are loaded one at a time and every pending prompt is evaluated on a model before the next
one is loaded. This module writes records and numbers only; :mod:`tvprompt.evaluation.report` draws them.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.splits import SALT_TSNE
from ..data.subset import stratified_subset
from ..environment import versions
from ..errors import TvpError, UsageError
from ..files import write_text_atomic
from ..hub import resolve_prompt_dir
from ..prompt import CONFIG_NAME, WEIGHTS_NAME, VisualPrompt, display_name
from ..tasks import normalize_answer  # the same match rule as tvprompt.evaluation.metrics
from ..training.distributed import World, init_world
from ..training.updates import seed_for
from .fingerprint import data_fingerprint, digest, model_fingerprint, task_fingerprint

log = logging.getLogger(__name__)

CLEAN = "none"  # the cell name of the unprompted pass
CELLS_DIR = "cells"
FEATURES_DIR = "features"
RESULTS_NAME = "results.json"
SAMPLES_NAME = "samples.jsonl"
COUNT_KEYS = ("n",)  # metric entries that are counts, not scores: no Δ
PRIMARY_ORDER = ("auc", "top1", "accuracy", "exact_match", "f1")


@dataclass
class EvalSetup:
    """What to evaluate on; everything here is part of each cell's fingerprint."""

    task: str
    data: str
    split: str = "test"
    limit: int | None = None
    batch_size: int = 16
    seed: int = 0
    max_new_tokens: int = 16
    image_size: int | None = None  # default: the first prompt's height, else 224
    corruption: str | None = None
    severity: int | None = None
    corruption_strength: str = "cifar10c"  # whose constants: cifar10c or imagenetc (tvprompt.data.corruptions)
    tsne: bool = False
    tsne_samples: int = 256
    num_workers: int | None = None  # image-decoding workers (default: up to 4 on a GPU, 0 on a CPU)
    progress: bool = True  # show a progress bar (on a terminal)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit: {self.limit} must be >= 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size: {self.batch_size} must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise UsageError(f"--num-workers: {self.num_workers} must be >= 0")
        from ..data.corruptions import STRENGTHS

        if self.corruption_strength not in STRENGTHS:
            raise UsageError(f"--corruption-strength: {self.corruption_strength!r} is not one of "
                             f"{', '.join(STRENGTHS)}")


@dataclass
class Backends:
    """The project pieces evaluation calls; replaceable so tests can pass small stand-ins."""

    load_task: Callable[[str], Any]
    open_dataset: Callable[..., Any]
    iter_batches: Callable[..., Any]
    load_adapter: Callable[[str], Any]
    compute_metrics: Callable[[Any, list[dict]], dict]
    fingerprint_model: Callable[[str], str] = model_fingerprint  # refuses an id naming no model

    @classmethod
    def default(cls, **load_options: Any) -> Backends:
        """The project's pieces; ``load_options`` (device, dtype, revision, trust_remote_code) go to every
        :func:`~tvprompt.models.registry.load_adapter` call."""
        import functools

        from ..data import iter_batches, open_dataset
        from ..models.registry import load_adapter
        from ..tasks import load_task
        from .metrics import compute_metrics

        load = functools.partial(load_adapter, **load_options) if load_options else load_adapter
        return cls(load_task, open_dataset, iter_batches, load, compute_metrics)


@dataclass
class PromptRef:
    name: str
    path: str
    sha256: str
    prompt: VisualPrompt = field(repr=False)

    @property
    def sources(self) -> list[str]:
        return [str(s.get("model_id", "?")) for s in self.prompt.config.sources]

    def summary(self) -> dict[str, Any]:
        cfg = self.prompt.config
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "method": cfg.method,
                "sources": self.sources, "shape": cfg.shape, "prompt_width": cfg.prompt_width,
                "image_size": [cfg.image_height, cfg.image_width]}


# ------------------------------------------------------------------------ helpers
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def _short(text: str) -> str:
    """A file-name-safe, collision-free stand-in: the slug's tail plus a hash of the text."""
    return f"{slug(text)[-48:].strip('_')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def cell_key(model_id: str, prompt_name: str) -> str:
    """File stem of one cell: ``<model>-<hash>__<prompt>-<hash>`` (distinct ids never share a file)."""
    return f"{_short(model_id)}__{_short(prompt_name)}"


def _hash_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load_prompts(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[PromptRef]:
    """Load prompt directories or Hub repos; names are ``names``, else each prompt's own name from its config
    (``tvp@llava-p8``), else (no source models recorded) the folder or repo name; made unique with a suffix."""
    if names is not None and len(names) != len(paths):
        raise UsageError(f"{len(names)} prompt names for {len(paths)} prompts")
    if names is not None and (len(set(names)) != len(names) or CLEAN in names):
        raise UsageError(f"prompt names must be unique and not {CLEAN!r}: {', '.join(names)}")
    refs: list[PromptRef] = []
    used: set[str] = {CLEAN}
    for k, raw in enumerate(paths):
        path = resolve_prompt_dir(raw)
        prompt = VisualPrompt.from_pretrained(path)
        own = display_name(prompt.config) if prompt.config.sources else Path(str(raw).split("@")[0]).name
        name, i = (names[k] if names else own) or "prompt", 2
        base = name
        while name in used:
            name, i = f"{base}-{i}", i + 1
        used.add(name)
        refs.append(PromptRef(name, str(path), _hash_files([path / CONFIG_NAME, path / WEIGHTS_NAME]), prompt))
    return refs


def cell_fingerprint(setup: EvalSetup, inputs: dict[str, str], model: str, prompt: PromptRef | None) -> str:
    """One cell's identity: the setup that changes numbers, the task and data contents
    (``inputs`` from :func:`input_fingerprints`), the model's fingerprint, the prompt's bytes, the version."""
    fields = dataclasses.asdict(setup)
    for key in ("task", "data", "batch_size", "tsne", "tsne_samples", "num_workers", "progress"):  # inputs / no effect
        fields.pop(key)
    return digest({"setup": fields, **inputs, "model": model, "prompt": prompt.sha256 if prompt else None,
                   "tvprompt": __version__})


def input_fingerprints(setup: EvalSetup, spec: Any) -> dict[str, str]:
    """Content fingerprints of the task spec and the data (with any reader option naming a path)."""
    return {"task": task_fingerprint(spec),
            "data": data_fingerprint(setup.data, getattr(spec, "format_options", None))}


def _sample_id(sample: Any, index: int) -> str:
    for attr in ("id", "sample_id"):
        value = getattr(sample, attr, None)
        if value is not None:
            return str(value)
    return str(index)


def _choices(spec: Any, sample: Any) -> tuple[str, ...]:
    """The answer texts to rank (the choices rendered through the answer template); () = open task."""
    if getattr(spec, "kind", None) == "open":
        return ()
    render = getattr(spec, "choice_texts_for", None) or spec.choices_for
    choices = render(sample)
    return tuple(choices) if choices else ()


# --------------------------------------------------------------------- one model
@torch.no_grad()
def _predict(adapter: Any, spec: Any, samples: list, pixels: list[torch.Tensor],
             max_new_tokens: int) -> list[list[dict]]:
    """Records for each of ``len(pixels)`` cells on one batch, from one batched adapter call per choice set."""
    family = getattr(adapter, "family", "")
    texts = [spec.prompt_for(s, family) for s in samples]
    k, b = len(pixels), len(samples)
    out: list[list[dict | None]] = [[None] * b for _ in range(k)]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(_choices(spec, s), []).append(i)
    for choices, idx in groups.items():
        sel = torch.tensor(idx)
        stacked = torch.cat([p[sel] for p in pixels]).to(adapter.device)
        prompts = [texts[i] for i in idx] * k
        if choices:
            scores = adapter.score_choices(stacked, prompts, list(choices)).float().cpu().view(k, len(idx), -1)
            preds = scores.argmax(-1)
            for c in range(k):
                for j, i in enumerate(idx):
                    out[c][i] = {"label": int(spec.label_index(samples[i])), "pred": int(preds[c, j]),
                                 "scores": [round(float(x), 6) for x in scores[c, j]], "choices": list(choices)}
        else:
            answers = adapter.generate(stacked, prompts, max_new_tokens)
            for c in range(k):
                for j, i in enumerate(idx):
                    gold, pred = str(spec.answer_for(samples[i])), answers[c * len(idx) + j]
                    out[c][i] = {"answer": gold, "pred_text": pred,
                                 "correct": normalize_answer(pred) == normalize_answer(gold)}
    return out  # type: ignore[return-value]


def _tsne_rows(dataset: Any, setup: EvalSetup) -> set[int]:
    """The rows whose features the t-SNE plot shows: a seeded subset stratified by class, not the first N."""
    if len(dataset) <= setup.tsne_samples:
        return set(range(len(dataset)))
    return set(stratified_subset(dataset, setup.tsne_samples, setup.seed, SALT_TSNE).rows)


def _features(adapter: Any, pixels: torch.Tensor) -> np.ndarray:
    feats = adapter.vision_features(pixels.to(adapter.device), kind="encoder").float()
    return (feats.mean(1) if feats.ndim == 3 else feats.flatten(1)).cpu().numpy()


def _run_model(
    model_id: str, pending: list[PromptRef | None], spec: Any, dataset: Any, setup: EvalSetup, backends: Backends,
    image_size: int, world: World | None = None,
) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """Records (and t-SNE features) of every pending cell on one model. Under several processes each one
    takes every ``world.size``-th batch and the pieces are gathered in batch order, so every process
    returns what one process would."""
    from tqdm import tqdm

    world = world or World()
    adapter = backends.load_adapter(model_id)
    names = [p.name if p else CLEAN for p in pending]
    records: dict[str, list[tuple[int, list[dict]]]] = {n: [] for n in names}  # (batch index, its records)
    feats: dict[str, list[tuple[int, np.ndarray]]] = {n: [] for n in names}
    from ..data.batching import default_workers

    workers = setup.num_workers if setup.num_workers is not None else default_workers(adapter.device)
    # prompts that fit the original image themselves (``fit: crop`` or another kernel) get batches fitted
    # the same way, straight to their inner size: the pixels ``tvp apply`` gives for the same image
    tsne_rows = _tsne_rows(dataset, setup) if setup.tsne else set()
    groups: dict[tuple, list[PromptRef | None]] = {}
    for p in pending:
        groups.setdefault(_image_options(p, image_size), []).append(p)
    bar = tqdm(total=len(dataset) * len(groups), desc=f"{getattr(adapter, 'name', model_id)} [{', '.join(names)}]",
               unit="img", disable=None if (setup.progress and world.is_main) else True, file=sys.stderr, leave=False)
    for options, group in groups.items():
        batches = backends.iter_batches(dataset, setup.batch_size, shuffle=False, seed=setup.seed,
                                        num_workers=workers, **dict(options))
        _run_batches(adapter, spec, setup, group, batches, records, feats, bar, world, tsne_rows)
    bar.close()
    del adapter
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    records, feats = _gather((records, feats), world)
    return ({n: [r for _, part in sorted(v, key=lambda t: t[0]) for r in part] for n, v in records.items()},
            {n: np.concatenate([f for _, f in sorted(v, key=lambda t: t[0])]) for n, v in feats.items() if v})


def _image_options(p: PromptRef | None, image_size: int) -> tuple:
    """The batcher's sizing options for prompt ``p`` (None = no prompt), as a hashable key."""
    config = p.prompt.config if p is not None else None
    if config is None or (config.fit, config.resample) == ("squash", "bilinear"):
        return (("image_size", image_size),)
    return (("image_size", tuple(config.inner_size)), ("fit", config.fit), ("resample", config.resample))


def _gather(local: tuple[dict[str, list], dict[str, list]], world: World) -> tuple[dict[str, list], dict[str, list]]:
    """Every process's (records, features) pieces, concatenated per cell (one process: as given)."""
    if world.size == 1:
        return local
    import torch.distributed as dist

    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, local)
    records = {n: [piece for recs, _ in parts for piece in recs[n]] for n in local[0]}
    feats = {n: [piece for _, fs in parts for piece in fs[n]] for n in local[1]}
    return records, feats


def _run_batches(adapter: Any, spec: Any, setup: EvalSetup, pending: list[PromptRef | None], batches: Any,
                 records: dict[str, list], feats: dict[str, list], bar: Any, world: World,
                 tsne_rows: set[int]) -> None:
    """Records (and features) of ``pending``'s cells, keyed by batch index; this process takes every
    ``world.size``-th batch."""
    names = [p.name if p else CLEAN for p in pending]
    for index, batch in enumerate(batches):
        if index % world.size != world.rank:
            continue
        seen = index * setup.batch_size  # global position of the batch's first sample
        images = batch.images.to(adapter.device).float()
        # random-patch placement seeded per batch: the same in any number of processes
        gens = {p.name: torch.Generator().manual_seed(seed_for(p.prompt.config.seed, "eval", index))
                for p in pending if p}
        pixels = [images if p is None else p.prompt.to(images.device).apply(images, generator=gens[p.name]).detach()
                  for p in pending]
        shapes = {tuple(x.shape) for x in pixels}
        if len(shapes) > 1:  # prompts of different sizes: one adapter call per size
            by_shape: dict[tuple, list[int]] = {}
            for c, x in enumerate(pixels):
                by_shape.setdefault(tuple(x.shape), []).append(c)
            per_cell: list[list[dict]] = [[] for _ in pixels]
            for cs in by_shape.values():
                for c, recs in zip(cs,
                                   _predict(adapter, spec, batch.samples, [pixels[c] for c in cs],
                                            setup.max_new_tokens),
                                   strict=True):
                    per_cell[c] = recs
        else:
            per_cell = _predict(adapter, spec, batch.samples, pixels, setup.max_new_tokens)
        for c, name in enumerate(names):
            records[name].append((index, [{"id": _sample_id(batch.samples[j], seen + j), **rec}
                                          for j, rec in enumerate(per_cell[c])]))
        take = [j for j in range(len(batch.samples)) if seen + j in tsne_rows]
        if take:
            with torch.no_grad():
                for c, name in enumerate(names):
                    feats[name].append((index, _features(adapter, pixels[c][take])))
        bar.update(min(len(batch.samples) * world.size, bar.total - bar.n))


# ------------------------------------------------------------------- the matrix
def evaluate(
    prompts: Sequence[str | Path],
    models: Sequence[str],
    setup: EvalSetup,
    output: str | Path,
    *,
    backends: Backends | None = None,
    command: str | None = None,
    names: Sequence[str] | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """Evaluate every (no prompt | prompt) × model cell; write cells, samples.jsonl and results.json.

    ``names`` overrides the prompts' display names (default: from each prompt's config).
    Under ``accelerate launch`` (or ``torchrun``) the samples are sharded over the processes and the
    main process writes the files; the results are those of one process.
    Returns the results dict (also written to ``output/results.json``).
    """
    own_world = world is None
    world = world or init_world()
    try:
        return _evaluate(prompts, models, setup, Path(output), backends, command, names, world)
    finally:
        if own_world:
            world.close()


def _evaluate(prompts: Sequence[str | Path], models: Sequence[str], setup: EvalSetup, output: Path,
              backends: Backends | None, command: str | None, names: Sequence[str] | None,
              world: World) -> dict[str, Any]:
    if not models:
        raise UsageError("give at least one --model")
    if len(set(models)) != len(models):
        raise UsageError("--model: the same model is listed twice")
    backends = backends or Backends.default()
    output = Path(output)
    refs = load_prompts(prompts, names)
    model_fps = {m: backends.fingerprint_model(m) for m in models}  # an unknown model fails before any output
    spec = backends.load_task(setup.task)
    kwargs: dict[str, Any] = {"seed": setup.seed}
    if setup.corruption:
        kwargs.update(corruption=setup.corruption, severity=setup.severity or 3,
                      corruption_strength=setup.corruption_strength)
    dataset = backends.open_dataset(spec, setup.data, setup.split, **kwargs)
    if len(dataset) == 0:
        raise TvpError(f"{setup.data}: split {setup.split!r} holds no samples")
    if setup.limit:
        dataset = stratified_subset(dataset, setup.limit, setup.seed)
    inputs = input_fingerprints(setup, spec)
    image_size = setup.image_size or (refs[0].prompt.config.image_height if refs else 224)
    cells_dir = output / CELLS_DIR
    cells_dir.mkdir(parents=True, exist_ok=True)

    all_cells: list[PromptRef | None] = [None, *refs]
    for model_id in models:
        pending = []
        for ref in all_cells:
            name = ref.name if ref else CLEAN
            path = cells_dir / f"{cell_key(model_id, name)}.json"
            fp = cell_fingerprint(setup, inputs, model_fps[model_id], ref)
            if path.is_file() and _read_json(path).get("fingerprint") == fp and (
                    not setup.tsne or (output / FEATURES_DIR / f"{cell_key(model_id, name)}.npy").is_file()):
                if world.is_main:
                    log.info("cell %s × %s: done, reusing %s", name, model_id, path)
                continue
            pending.append(ref)
        if not pending:
            continue
        start = time.perf_counter()
        records, feats = _run_model(model_id, pending, spec, dataset, setup, backends, image_size, world)
        seconds = time.perf_counter() - start
        if not world.is_main:
            continue
        for ref in pending:
            name = ref.name if ref else CLEAN
            key = cell_key(model_id, name)
            if name in feats:
                (output / FEATURES_DIR).mkdir(exist_ok=True)
                _save_npy(output / FEATURES_DIR / f"{key}.npy", feats[name])
            cell = {
                "model": model_id, "prompt": None if ref is None else ref.name,
                "fingerprint": cell_fingerprint(setup, inputs, model_fps[model_id], ref),
                "n": len(records[name]), "seconds": round(seconds / len(pending), 3),
                "metrics": backends.compute_metrics(spec, records[name]), "records": records[name],
            }
            write_text_atomic(cells_dir / f"{key}.json", json.dumps(cell) + "\n")
            log.info("cell %s × %s: %s", name, model_id, _fmt_metrics(cell["metrics"]))

    world.barrier()  # the main process has written every cell
    cells = {(m, r.name if r else CLEAN): _read_json(cells_dir / f"{cell_key(m, r.name if r else CLEAN)}.json")
             for m in models for r in all_cells}
    results = summarize(cells, refs, list(models), spec, setup, command)
    results["fingerprints"] = {**inputs, "models": model_fps, "prompts": {r.name: r.sha256 for r in refs},
                               "tvprompt": __version__}
    if world.is_main:
        _write_samples(output / SAMPLES_NAME, cells)
        write_text_atomic(output / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
    world.barrier()
    return results


def summarize(cells: dict[tuple[str, str], dict], refs: list[PromptRef], models: list[str], spec: Any,
              setup: EvalSetup, command: str | None = None) -> dict[str, Any]:
    """The results document: per cell metrics, clean vs prompted and Δ, per prompt the mean Δ over models."""
    clean = {m: cells[(m, CLEAN)]["metrics"] for m in models}
    primary = primary_metric(spec, next(iter(clean.values())))
    transfer: dict[str, dict] = {}
    average: dict[str, dict] = {}
    for ref in refs:
        rows = {}
        for m in models:
            prompted = cells[(m, ref.name)]["metrics"]
            rows[m] = {"clean": clean[m], "prompted": prompted, "delta": metric_delta(prompted, clean[m]),
                       "source": m in ref.sources}
        transfer[ref.name] = rows
        keys = set.intersection(*(set(r["delta"]) for r in rows.values()))
        targets = [r for r in rows.values() if not r["source"]]
        average[ref.name] = {
            "all": {k: float(np.mean([r["delta"][k] for r in rows.values()])) for k in sorted(keys)},
            "targets": {k: float(np.mean([r["delta"][k] for r in targets])) for k in sorted(keys)} if targets else {},
        }
    return {
        "task": {"name": getattr(spec, "name", setup.task), "version": getattr(spec, "version", None)},
        "setup": dataclasses.asdict(setup),
        "primary_metric": primary,
        "models": [{"id": m, "name": Path(m.split(":", 1)[-1]).name or m} for m in models],
        "prompts": [r.summary() for r in refs],
        "cells": [{"model": m, "prompt": None if p == CLEAN else p, "n": c["n"], "metrics": c["metrics"],
                   "fingerprint": c.get("fingerprint")} for (m, p), c in cells.items()],
        "clean": clean,
        "transfer": transfer,
        "average_delta": average,
        "versions": versions(),
        "seeds": {"data": setup.seed, "prompts": {r.name: r.prompt.config.seed for r in refs}},
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def metric_delta(prompted: dict, clean: dict) -> dict[str, float]:
    """Δ = prompted − clean for every numeric metric both sides have."""
    return {k: float(prompted[k]) - float(clean[k]) for k in prompted
            if k in clean and k not in COUNT_KEYS and _is_number(prompted[k]) and _is_number(clean[k])}


def primary_metric(spec: Any, metrics: dict) -> str:
    """The metric tables show: the task's first listed metric, else AUC > top-1 > accuracy > …"""
    listed = getattr(spec, "metrics", None)
    chosen = getattr(spec, "primary_metric", None) or (listed[0] if isinstance(listed, list) and listed else None)
    if isinstance(chosen, str) and chosen in metrics:
        return chosen
    for key in PRIMARY_ORDER:
        if key in metrics:
            return key
    numeric = [k for k, v in metrics.items() if _is_number(v) and k not in COUNT_KEYS]
    if not numeric:
        raise TvpError("the task's metrics hold no numeric value to report")
    return numeric[0]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _fmt_metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); recomputing", path, e)
        return {}


def _save_npy(path: Path, array: np.ndarray) -> None:
    from ..files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _write_samples(path: Path, cells: dict[tuple[str, str], dict]) -> None:
    lines = []
    for (model, prompt), cell in cells.items():
        for rec in cell["records"]:
            lines.append(json.dumps({"model": model, "prompt": None if prompt == CLEAN else prompt, **rec}))
    write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
