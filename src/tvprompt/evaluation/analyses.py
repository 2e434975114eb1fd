"""The paper's analyses: each trains the prompts it needs, evaluates them with
:func:`tvprompt.evaluation.evaluate.evaluate` and writes ``NAME.json`` + ``NAME.md`` + ``NAME.png``
into its output folder.

| analysis | paper | what varies |
|---|---|---|
| ``ablation`` | Tab. 2 | FCA / TSE on or off (none, FCA, TSE, both) |
| ``width`` | Tab. 3 | prompt width p |
| ``data-scale`` | Fig. 5 | fraction of the training split (1 % … 100 %) |
| ``cross-dataset`` | Tab. 4 | evaluation dataset (same kind of task) for one prompt |
| ``corruption`` | Tab. 9 | corruption × severity of the evaluation images |
| ``efficiency`` | Tab. 5 | see :mod:`tvprompt.evaluation.efficiency` |

Training goes through one function, :func:`train_prompt` (replaceable: every analysis takes
``trainer=``); each trained prompt is reused on a rerun when its recipe is unchanged, and the
evaluations resume cell by cell, so an interrupted analysis continues where it stopped.
Every analysis has a reduced mode (``reduced=True``; ``--reduced``) that runs a small grid.
The sweeps (ablation, width, data scale) take ``seeds=N``: every variant trained with N training seeds
(its own folder each), all evaluated on the same samples, reported as mean ± sd with error bars.

Under ``accelerate launch`` one analysis joins the process group once (``world=``, else
:func:`~tvprompt.training.distributed.init_world`) and hands it to every training run and evaluation
it makes, which shard their work over the processes; the main process writes the reports.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..files import write_text_atomic
from ..training.distributed import World, init_world
from .evaluate import Backends, EvalSetup, evaluate, slug, versions
from .report import bar_chart, fmt_delta, fmt_mean_sd, line_chart, markdown_table, mean_sd

log = logging.getLogger(__name__)

# ImageNet-C's 15 corruptions (Hendrycks & Dietterich), the set Tab. 9 reports.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
WIDTHS = (10, 20, 30, 40, 50)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
ABLATION = {"none": (False, False), "FCA": (True, False), "TSE": (False, True), "FCA+TSE": (True, True)}


@dataclass
class TrainRecipe:
    """How to train one prompt; mapped onto :class:`tvprompt.training.config.TrainConfig` by :func:`train_prompt`."""

    sources: list[str]
    task: str
    data: str
    method: str = "tvp"
    guide: str | None = None
    steps: int | None = None
    batch_size: int = 16
    width: int = 30
    image_size: int = 224
    fca: float | None = None  # None: the method's preset (tvp 0.005, vp/evp 0)
    tse: float | None = None  # None: the method's preset (tvp 0.001, vp/evp 0); > 0 needs ``guide``
    fraction: float = 1.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def __post_init__(self) -> None:
        if not self.sources:
            raise UsageError("give at least one --source model to train on")
        if not 0 < self.fraction <= 1:
            raise UsageError(f"fraction {self.fraction} must be in (0, 1]")


Trainer = Callable[[TrainRecipe, Path], Path]


def train_prompt(recipe: TrainRecipe, output: Path, runtime: dict[str, Any] | None = None,
                 world: World | None = None) -> Path:
    """Train one prompt with the project trainer into ``output``; returns the prompt directory.

    ``runtime``: TrainConfig runtime fields (device, dtype, ...) that do not change the recipe.
    ``world``: the processes to train with (default: the trainer joins and leaves its own)."""
    from ..training.config import resolve_config
    from ..training.loop import train

    flags = {"sources": list(recipe.sources), "task": recipe.task, "data": recipe.data, "guide": recipe.guide,
             "output": str(output), "steps": recipe.steps, "batch_size": recipe.batch_size, "width": recipe.width,
             "image_size": recipe.image_size, "fca": recipe.fca, "tse": recipe.tse, "seed": recipe.seed,
             "progress": False, **recipe.extra, **(runtime or {})}
    cfg = resolve_config(recipe.method, flags=flags)
    spec = train_set = val_set = None
    if recipe.fraction < 1:  # the trainer reads whole splits; hand it the seeded stratified share
        from ..data import open_dataset
        from ..tasks import load_task

        spec = load_task(recipe.task)
        train_set = open_dataset(spec, recipe.data, cfg.train_split, seed=recipe.seed, fraction=recipe.fraction)
        if cfg.val_split:
            val_set = open_dataset(spec, recipe.data, cfg.val_split, seed=recipe.seed)
    train(cfg, spec=spec, train_set=train_set, val_set=val_set, world=world)
    return output / "prompt"


@contextmanager
def _joined(world: World | None) -> Iterator[World]:
    """The processes of one analysis: ``world``, else joined here once and left at the end (joining
    and leaving per evaluation breaks a launched run at its second evaluation)."""
    if world is not None:
        yield world
        return
    world = init_world()
    try:
        yield world
    finally:
        world.close()


def _in_world(trainer: Trainer, world: World) -> Trainer:
    """The project trainer bound to the analysis's processes (other trainers are called as given)."""
    if trainer is train_prompt:
        return functools.partial(train_prompt, world=world)
    if isinstance(trainer, functools.partial) and trainer.func is train_prompt and "world" not in trainer.keywords:
        return functools.partial(trainer, world=world)
    return trainer


def trained(recipe: TrainRecipe, output: Path, trainer: Trainer, world: World | None = None) -> Path:
    """``trainer(recipe, output)`` unless ``output`` already holds a prompt made from the same recipe.

    A folder holding anything else (another recipe, an interrupted run) is cleared and trained afresh.
    Under several processes every process trains (the trainer shards the batches) and the main one
    clears the folder and writes the stamp.
    """
    world = world or World()
    stamp = output / "recipe.json"
    wanted = json.dumps(dataclasses.asdict(recipe), sort_keys=True)
    prompt_dir = output / "prompt"
    reuse = stamp.is_file() and stamp.read_text() == wanted and prompt_dir.is_dir()
    world.barrier()  # every process has looked before the main one clears
    if reuse:
        log.info("reusing %s (same recipe)", prompt_dir)
        return prompt_dir
    if world.is_main:
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
    world.barrier()
    result = Path(trainer(recipe, output))
    world.barrier()  # the main process has written the prompt
    if world.is_main:
        write_text_atomic(stamp, wanted)
    world.barrier()
    return result


# ------------------------------------------------------------------ writing
def _delta_rows(results: dict[str, Any], labels: dict[str, str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Per prompt: Δ of the primary metric per model and the mean over models."""
    metric = results["primary_metric"]
    models = [m["id"] for m in results["models"]]
    rows = []
    for name, label in labels.items():
        per_model = {m: results["transfer"][name][m]["delta"].get(metric) for m in models}
        rows.append({"label": label, "prompt": name, "delta": per_model,
                     "prompted": {m: results["transfer"][name][m]["prompted"].get(metric) for m in models},
                     "avg_delta": results["average_delta"][name]["all"].get(metric)})
    return models, rows


def write_analysis(output: Path, name: str, doc: dict[str, Any], header: Sequence[str],
                   rows: Sequence[Sequence[Any]], plot: Callable[[Path], Path], note: str = "",
                   world: World | None = None) -> dict[str, Any]:
    """NAME.json (the document), NAME.md (a table) and NAME.png (``plot``) in ``output``, written by the
    main process (the others return the same document)."""
    doc = {"analysis": name, **doc, "versions": versions()}
    if world is not None and not world.is_main:
        return doc
    write_text_atomic(output / f"{name}.json", json.dumps(doc, indent=2, default=str) + "\n")
    title = f"# {name}: {doc.get('title', '')}\n\n" + (f"{note}\n\n" if note else "")
    write_text_atomic(output / f"{name}.md", title + markdown_table(header, rows) + f"\n![{name}]({name}.png)\n")
    plot(output / f"{name}.png")
    return doc


def _model_header(results: dict[str, Any]) -> list[str]:
    from .report import model_names

    return [f"Δ {n}" for n in model_names(results).values()]


def _sweep(name: str, title: str, variants: dict[str, TrainRecipe], targets: Sequence[str], setup: EvalSetup,
           output: Path, trainer: Trainer, backends: Backends | None, xs: Sequence[float] | None = None,
           xlabel: str = "", logx: bool = False, reduced: bool = False, world: World | None = None,
           seeds: int = 1) -> dict[str, Any]:
    check_seeds(seeds)
    with _joined(world) as world:
        return _sweep_in(name, title, variants, targets, setup, Path(output), trainer, backends, xs, xlabel, logx,
                         reduced, world, seeds)


def check_seeds(seeds: int) -> None:
    """Refuse a training-seed count below 1 (``--seeds``)."""
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: give 1 or more training seeds per variant")


def _stat(values: Sequence[float | None]) -> dict[str, float] | None:
    """Mean ± sd over seeds; None when a seed has no value."""
    present = [float(v) for v in values if v is not None]
    return mean_sd(present) if len(present) == len(values) else None


def _over_seeds(label: str, per_seed: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """One variant's row from its per-seed rows: mean ± sd per model and of the average Δ."""
    return {"label": label, "seeds": [r["seed"] for r in per_seed], "prompts": [r["prompt"] for r in per_seed],
            "delta": {m: _stat([r["delta"][m] for r in per_seed]) for m in models},
            "prompted": {m: _stat([r["prompted"][m] for r in per_seed]) for m in models},
            "avg_delta": _stat([r["avg_delta"] for r in per_seed]), "per_seed": per_seed}


def _points(value: float | dict[str, float] | None, key: str = "mean") -> float:
    """A Δ (one seed) or the ``key`` of a mean ± sd (several) in points; 0 when missing."""
    if value is None:
        return 0.0
    return 100 * (value[key] if isinstance(value, dict) else (value if key == "mean" else 0.0))


def _sweep_in(name: str, title: str, variants: dict[str, TrainRecipe], targets: Sequence[str], setup: EvalSetup,
              output: Path, trainer: Trainer, backends: Backends | None, xs: Sequence[float] | None, xlabel: str,
              logx: bool, reduced: bool, world: World, seeds: int = 1) -> dict[str, Any]:
    if reduced:
        variants = {k: _reduced(r) for k, r in variants.items()}
    trainer = _in_world(trainer, world)
    # one run per (variant, training seed), each in its own folder; every run is evaluated in one pass,
    # so all see the same evaluation subset (``setup.seed``), whatever their training seed
    runs = [(label, dataclasses.replace(r, seed=r.seed + i),
             slug(label) if seeds == 1 else f"{slug(label)}-seed{r.seed + i}")
            for label, r in variants.items() for i in range(seeds)]
    dirs = [trained(r, output / "train" / key, trainer, world) for _, r, key in runs]
    names = [f"{name}-{key}" for _, _, key in runs]
    results = evaluate(dirs, targets, setup, output / "eval", backends=backends, names=names, world=world)
    models, rows = _delta_rows(results, dict(zip(names, (label for label, _, _ in runs), strict=True)))
    if seeds > 1:
        for row, (_, r, _) in zip(rows, runs, strict=True):
            row["seed"] = r.seed
        rows = [_over_seeds(label, rows[i * seeds:(i + 1) * seeds], models) for i, label in enumerate(variants)]
    metric = results["primary_metric"]
    cell = fmt_delta if seeds == 1 else functools.partial(fmt_mean_sd, signed=True)
    table = [[r["label"], *(cell(r["delta"][m]) for m in models), cell(r["avg_delta"])] for r in rows]
    header = ["variant", *_model_header(results), f"avg Δ {metric}"]

    plot_title = title if seeds == 1 else f"{title}: mean ± sd over {seeds} training seeds"

    def plot(path: Path) -> Path:
        def errors(series: dict[str, list[Any]]) -> dict[str, list[float]] | None:
            return {k: [_points(v, "sd") for v in vs] for k, vs in series.items()} if seeds > 1 else None

        def means(series: dict[str, list[Any]]) -> dict[str, list[float]]:
            return {k: [_points(v) for v in vs] for k, vs in series.items()}

        if xs is None:
            from .report import model_names

            series = {r["label"]: [r["delta"][m] for m in models] for r in rows}
            return bar_chart(list(model_names(results).values()), means(series), path, title=plot_title,
                             ylabel=f"Δ {metric} (points)", errors=errors(series))
        series = {"mean over models": [r["avg_delta"] for r in rows]}
        if len(models) > 1:
            series.update({m: [r["delta"][m] for r in rows] for m in models})
        return line_chart(list(xs), means(series), path, title=plot_title, xlabel=xlabel,
                          ylabel=f"Δ {metric} (points)", logx=logx, errors=errors(series))

    recipes: dict[str, Any] = {k: dataclasses.asdict(v) for k, v in variants.items()}
    if seeds > 1:
        recipes = {label: [dataclasses.asdict(r) for lab, r, _ in runs if lab == label] for label in variants}
    doc = {"title": title, "primary_metric": metric, "reduced": reduced, "models": models, "rows": rows,
           "recipes": recipes, "eval": str(output / "eval"), "setup": dataclasses.asdict(setup)}
    if seeds > 1:
        doc["seeds"] = [r.seed for _, r, _ in runs[:seeds]]
    if xs is not None:
        doc["x"] = list(xs)
    note = f"Δ = prompted − clean {metric} in points on `{setup.split}`, evaluated on {', '.join(targets)}."
    if seeds > 1:
        listed = ", ".join(map(str, doc["seeds"]))
        note += (f" Each cell: mean ± sd (sample sd) over {seeds} training seeds ({listed}),"
                 f" all evaluated on the same samples (evaluation seed {setup.seed}).")
    return write_analysis(output, name, doc, header, table, plot, note, world)


# ------------------------------------------------------------------ analyses
def ablation(base: TrainRecipe, targets: Sequence[str], setup: EvalSetup, output: str | Path, *,
             trainer: Trainer = train_prompt, backends: Backends | None = None, reduced: bool = False,
             world: World | None = None, seeds: int = 1) -> dict[str, Any]:
    """Tab. 2: the same training with FCA and TSE switched on and off (weights from ``base``, else tvp's).

    ``seeds`` > 1: each variant is trained with seeds ``base.seed`` … ``base.seed + seeds - 1`` and reported as
    mean ± sd (the same for :func:`width_sweep` and :func:`data_scale`)."""
    check_seeds(seeds)
    if base.guide is None:
        raise UsageError("the ablation trains TSE variants: pass --guide MODEL (a CLIP-like model)")
    fca = base.fca or 0.005
    tse = base.tse or 0.001
    variants = {label: dataclasses.replace(base, fca=fca if f else 0.0, tse=tse if t else 0.0)
                for label, (f, t) in ABLATION.items()}
    return _sweep("ablation", "FCA / TSE ablation", variants, targets, setup, Path(output), trainer, backends,
                  reduced=reduced, world=world, seeds=seeds)


def width_sweep(base: TrainRecipe, targets: Sequence[str], setup: EvalSetup, output: str | Path, *,
                widths: Sequence[int] | None = None, trainer: Trainer = train_prompt,
                backends: Backends | None = None, reduced: bool = False, world: World | None = None,
                seeds: int = 1) -> dict[str, Any]:
    """Tab. 3: prompt width p."""
    widths = list(widths or ((min(WIDTHS), base.width) if reduced else WIDTHS))
    widths = sorted(set(widths))
    variants = {f"p={w}": dataclasses.replace(base, width=w) for w in widths}
    return _sweep("width", "prompt width", variants, targets, setup, Path(output), trainer, backends,
                  xs=widths, xlabel="prompt width p (pixels)", reduced=reduced, world=world, seeds=seeds)


def data_scale(base: TrainRecipe, targets: Sequence[str], setup: EvalSetup, output: str | Path, *,
               fractions: Sequence[float] | None = None, trainer: Trainer = train_prompt,
               backends: Backends | None = None, reduced: bool = False, world: World | None = None,
               seeds: int = 1) -> dict[str, Any]:
    """Fig. 5: fraction of the training data (the training seed also draws the share)."""
    fractions = sorted(set(fractions or ((0.1, 1.0) if reduced else FRACTIONS)))
    variants = {f"{100 * f:g}%": dataclasses.replace(base, fraction=f) for f in fractions}
    return _sweep("data_scale", "training data scale", variants, targets, setup, Path(output), trainer, backends,
                  xs=[100 * f for f in fractions], xlabel="training data (%)", logx=True, reduced=reduced, world=world,
                  seeds=seeds)


def _reduced(recipe: TrainRecipe) -> TrainRecipe:
    """Reduced mode: at most 2 updates per trained prompt."""
    return dataclasses.replace(recipe, steps=min(recipe.steps or 2, 2))


def _prompt_or_train(prompt: str | Path | None, base: TrainRecipe | None, output: Path, trainer: Trainer,
                     reduced: bool, world: World) -> Path:
    if prompt is not None:
        return Path(prompt)
    if base is None:
        raise UsageError("give --prompt DIR, or --source/--train-data to train one")
    return trained(_reduced(base) if reduced else base, output / "train" / "prompt", _in_world(trainer, world), world)


def cross_dataset(eval_sets: Sequence[tuple[str, str]], targets: Sequence[str], setup: EvalSetup,
                  output: str | Path, *, prompt: str | Path | None = None, base: TrainRecipe | None = None,
                  trainer: Trainer = train_prompt, backends: Backends | None = None,
                  reduced: bool = False, world: World | None = None) -> dict[str, Any]:
    """Tab. 4: one prompt (given, or trained from ``base``) evaluated on other datasets of the same kind."""
    if not eval_sets:
        raise UsageError("give at least one --eval TASK=PATH")
    with _joined(world) as world:
        return _cross_dataset(eval_sets, targets, setup, Path(output), prompt, base, trainer, backends, reduced, world)


def _cross_dataset(eval_sets: Sequence[tuple[str, str]], targets: Sequence[str], setup: EvalSetup, output: Path,
                   prompt: str | Path | None, base: TrainRecipe | None, trainer: Trainer, backends: Backends | None,
                   reduced: bool, world: World) -> dict[str, Any]:
    pdir = _prompt_or_train(prompt, base, output, trainer, reduced, world)
    rows, metric, header = [], "", []
    for task, data in eval_sets:
        s = dataclasses.replace(setup, task=task, data=data)
        res = evaluate([pdir], targets, s, output / "eval" / slug(f"{task}-{Path(data).name}"), backends=backends,
                       names=["prompt"], world=world)
        models, (row,) = _delta_rows(res, {"prompt": f"{task} ({Path(data).name})"})
        metric, header = res["primary_metric"], _model_header(res)
        row["clean"] = {m: res["clean"][m].get(metric) for m in models}
        rows.append(row)
    table = [[r["label"], *(fmt_delta(r["delta"][m]) for m in targets), fmt_delta(r["avg_delta"])] for r in rows]

    def plot(path: Path) -> Path:
        return bar_chart([r["label"] for r in rows],
                         {"mean Δ over models": [100 * (r["avg_delta"] or 0) for r in rows]},
                         path, title="cross-dataset transfer", ylabel="Δ (points)")

    doc = {"title": "cross-dataset transfer", "prompt": str(pdir), "primary_metric": metric, "reduced": reduced,
           "models": list(targets), "rows": rows,
           "recipe": dataclasses.asdict(base) if base and prompt is None else None}
    return write_analysis(output, "cross_dataset", doc, ["evaluated on", *header, "avg Δ"], table, plot,
                          "Δ = prompted − clean, in points, of each dataset's primary metric.", world)


def corruption(targets: Sequence[str], setup: EvalSetup, output: str | Path, *, prompt: str | Path | None = None,
               base: TrainRecipe | None = None, corruptions: Sequence[str] | None = None,
               severities: Sequence[int] | None = None, trainer: Trainer = train_prompt,
               backends: Backends | None = None, reduced: bool = False, world: World | None = None) -> dict[str, Any]:
    """Tab. 9: mean Δ over models for every corruption × severity of the evaluation images."""
    corruptions = list(corruptions or (CORRUPTIONS[:2] if reduced else CORRUPTIONS))
    severities = list(severities or ((3,) if reduced else SEVERITIES))
    with _joined(world) as world:
        return _corruption(targets, setup, Path(output), prompt, base, corruptions, severities, trainer, backends,
                           reduced, world)


def _corruption(targets: Sequence[str], setup: EvalSetup, output: Path, prompt: str | Path | None,
                base: TrainRecipe | None, corruptions: list[str], severities: list[int], trainer: Trainer,
                backends: Backends | None, reduced: bool, world: World) -> dict[str, Any]:
    pdir = _prompt_or_train(prompt, base, output, trainer, reduced, world)
    grid: dict[str, dict[int, dict[str, Any]]] = {}
    metric = ""
    for c in corruptions:
        for s in severities:
            es = dataclasses.replace(setup, corruption=c, severity=s)
            res = evaluate([pdir], targets, es, output / "eval" / f"{slug(c)}-{s}", backends=backends, names=["prompt"],
                           world=world)
            models, (row,) = _delta_rows(res, {"prompt": f"{c}/{s}"})
            metric = res["primary_metric"]
            row["clean"] = {m: res["clean"][m].get(metric) for m in models}
            grid.setdefault(c, {})[s] = row
    means = {c: float(np.mean([grid[c][s]["avg_delta"] for s in severities])) for c in corruptions}
    table = [[c, *(fmt_delta(grid[c][s]["avg_delta"]) for s in severities), fmt_delta(means[c])] for c in corruptions]
    overall = float(np.mean(list(means.values())))
    table.append(["mean", *(fmt_delta(float(np.mean([grid[c][s]["avg_delta"] for c in corruptions])))
                            for s in severities), fmt_delta(overall)])

    def plot(path: Path) -> Path:
        return bar_chart(corruptions, {"mean Δ over severities and models": [100 * means[c] for c in corruptions]},
                         path, title="robustness to corruptions", ylabel=f"Δ {metric} (points)")

    doc = {"title": "corruption robustness", "prompt": str(pdir), "primary_metric": metric, "reduced": reduced,
           "models": list(targets), "corruptions": corruptions, "severities": severities,
           "strength": setup.corruption_strength,
           "grid": {c: {str(s): v for s, v in d.items()} for c, d in grid.items()}, "mean_delta": means,
           "overall_mean_delta": overall}
    return write_analysis(output, "corruption", doc, ["corruption", *(f"sev {s}" for s in severities), "mean"],
                          table, plot, f"Mean over models of Δ {metric} (points) on corrupted `{setup.split}` images "
                          f"({setup.corruption_strength} constants).",
                          world)
