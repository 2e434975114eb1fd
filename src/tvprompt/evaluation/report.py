"""Tables and plots from evaluation records. Reads ``results.json`` (and feature files); computes nothing new.

``write_report(output)`` turns a ``tvp eval`` folder into ``table.md`` (rows = no prompt and each
prompt, columns = models, then the average Δ; a prompt's source model is marked —), ``delta.png``
(Δ per model and prompt), ``prompt_<name>.png`` (each prompt rendered on grey) and, when features
were saved (``--tsne``), ``tsne_<model>.png`` (clean vs prompted features, Fig. 3 of the paper).
The small helpers (``markdown_table``, ``bar_chart``, ``line_chart``, ``mean_sd``) are shared with the
analyses and the demo.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TvpError
from ..files import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

TABLE_NAME = "table.md"
DELTA_PNG = "delta.png"
SOURCE_MARK = "—"


# ------------------------------------------------------------------ formatting
def fmt_value(value: float | None) -> str:
    """A metric in [0, 1] as a percentage with one decimal; '' for missing."""
    return "" if value is None else f"{100 * value:.1f}"


def fmt_delta(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}"


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample sd (ddof=1; 0 for one value) and count of ``values`` (e.g. one per training seed)."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def fmt_mean_sd(stat: dict[str, float] | None, signed: bool = False, with_sd: bool = True) -> str:
    """A :func:`mean_sd` of metrics in [0, 1] as points: ``mean ± sd`` (the mean alone for one value); '' for None."""
    if stat is None:
        return ""
    value = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return f"{value} ± {100 * stat['sd']:.1f}" if with_sd and stat["n"] > 1 else value


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are str()-ed and pipes escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], path: str | Path, *, title: str = "",
              ylabel: str = "", sources: dict[str, Sequence[bool]] | None = None, note: str = "",
              errors: dict[str, Sequence[float]] | None = None) -> Path:
    """Grouped bars: one group per label in ``groups``, one bar per series; ``errors[name]``: error bars (± that).

    ``sources[name][i]``: bar i of series ``name`` is a source model of that prompt (hatched, as the
    tables mark it). A bar of exactly 0 gets a dash at 0 so that "no change" stays visible. ``note``
    is printed under the plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    any_source = False
    for i, (name, values) in enumerate(series.items()):
        pos = x + (i - (len(series) - 1) / 2) * width
        yerr = errors.get(name) if errors else None
        bars = ax.bar(pos, values, width, label=name, yerr=yerr, capsize=3 if yerr is not None else 0)
        color = bars.patches[0].get_facecolor() if bars.patches else None
        for k, bar in enumerate(bars.patches):
            if sources and sources.get(name) and sources[name][k]:
                bar.set_hatch("///")
                bar.set_edgecolor("black")
                any_source = True
        zeros = [p for p, v in zip(pos, values, strict=True) if v == 0]
        if zeros:
            ax.plot(zeros, [0] * len(zeros), linestyle="none", marker="_", markersize=max(6.0, 60 * width),
                    markeredgewidth=3, color=color)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    notes = ([f"hatched {SOURCE_MARK} a source model of the prompt (white-box, not a transfer)"] if any_source else [])
    notes += [note] if note else []
    if notes:
        fig.text(0.01, -0.02, "\n".join(notes), fontsize=7, ha="left", va="top", wrap=True)
    return _save(fig, Path(path))


def line_chart(xs: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, *, title: str = "",
               xlabel: str = "", ylabel: str = "", logx: bool = False, ticks_at_xs: bool = True,
               errors: dict[str, Sequence[float]] | None = None) -> Path:
    """One line per series over ``xs``; the x ticks sit at the ``xs`` themselves (the widths or fractions run);
    ``errors[name]``: error bars (± that) on that series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, ys in series.items():
        if errors and errors.get(name) is not None:
            ax.errorbar(xs, ys, yerr=errors[name], marker="o", capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    if ticks_at_xs:
        ax.set_xticks(list(xs), [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, Path(path))


# ------------------------------------------------------------------ eval report
def read_results(output: str | Path) -> dict[str, Any]:
    path = Path(output) / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TvpError(f"{path}: not found; run `tvp eval ... --output {output}` first") from None
    except json.JSONDecodeError as e:
        raise TvpError(f"{path}: not valid JSON ({e})") from None


def model_names(results: dict[str, Any]) -> dict[str, str]:
    """Model id -> display name, made unique."""
    names: dict[str, str] = {}
    for m in results["models"]:
        name = m.get("name") or m["id"]
        names[m["id"]] = name if name not in names.values() else m["id"]
    return names


def render_table(results: dict[str, Any]) -> str:
    """Table 1 of the paper: clean row, then per prompt the prompted metric (Δ) per model and the mean Δ."""
    metric = results["primary_metric"]
    names = model_names(results)
    models = list(names)
    any_source = any(row["source"] for rows in results["transfer"].values() for row in rows.values())
    header = ["prompt", "method", *names.values(), f"avg Δ {metric}"] + (["avg Δ (targets)"] if any_source else [])
    rows: list[list[str]] = [["no prompt", "", *(fmt_value(results["clean"][m].get(metric)) for m in models), ""]
                             + ([""] if any_source else [])]
    for p in results["prompts"]:
        cells = []
        for m in models:
            row = results["transfer"][p["name"]][m]
            text = f"{fmt_value(row['prompted'].get(metric))} ({fmt_delta(row['delta'].get(metric))})"
            cells.append(f"{SOURCE_MARK} {text}" if row["source"] else text)
        avg = results["average_delta"][p["name"]]
        extra = [fmt_delta(avg["targets"].get(metric)) if avg["targets"] else ""] if any_source else []
        rows.append([p["name"], p.get("method") or "", *cells, fmt_delta(avg["all"].get(metric)), *extra])
    task = results["task"]["name"]
    n = {c["n"] for c in results["cells"]}
    lines = [
        f"# Transfer results: {task}",
        "",
        f"{metric} in % on split `{results['setup']['split']}` ({', '.join(map(str, sorted(n)))} samples); "
        "each prompted cell shows the value and (Δ = prompted − clean) in points; avg Δ is the mean over all "
        "models" + (f", avg Δ (targets) the mean over models that were not the prompt's source ({SOURCE_MARK} "
                    "marks a source model: a white-box result, not a transfer)." if any_source else "."),
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


def write_report(output: str | Path, *, tsne: bool | None = None) -> list[Path]:
    """Write table.md and the PNGs for an evaluation folder. Returns the files written."""
    output = Path(output)
    results = read_results(output)
    metric = results["primary_metric"]
    names = model_names(results)
    written = [output / TABLE_NAME]
    write_text_atomic(written[0], render_table(results))
    if results["prompts"]:
        series = {p["name"]: [100 * results["transfer"][p["name"]][m]["delta"].get(metric, np.nan) for m in names]
                  for p in results["prompts"]}
        sources = {p["name"]: [bool(results["transfer"][p["name"]][m]["source"]) for m in names]
                   for p in results["prompts"]}
        written.append(bar_chart(list(names.values()), series, output / DELTA_PNG, sources=sources,
                                 title=f"{results['task']['name']}: Δ {metric} per model",
                                 ylabel=f"Δ {metric} (points)"))
    for p in results["prompts"]:
        path = write_prompt_png(p, output / f"prompt_{p['name']}.png")
        if path:
            written.append(path)
    feature_dir = output / "features"
    if (tsne is None and feature_dir.is_dir()) or tsne:
        written += write_tsne(output, results)
    return written


def write_prompt_png(prompt: dict[str, Any], path: Path) -> Path | None:
    from ..errors import PromptFileError
    from ..imageio import save_png
    from ..prompt import VisualPrompt

    try:
        save_png(VisualPrompt.from_pretrained(prompt["path"]).render(), path)
    except PromptFileError as e:
        log.warning("prompt image for %s skipped: %s", prompt["name"], e)
        return None
    return path


def _labels(output: Path, model: str, prompt: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(class index per sample, class names) of a cell's first ``n`` records."""
    from .evaluate import CELLS_DIR, CLEAN, cell_key

    cell = json.loads((output / CELLS_DIR / f"{cell_key(model, prompt or CLEAN)}.json").read_text())
    labels = [r["label"] if "label" in r else r.get("answer") for r in cell["records"][:n]]
    names, idx = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
    return idx, names


def write_tsne(output: Path, results: dict[str, Any], *, seed: int = 0) -> list[Path]:
    """Per model: one t-SNE of the clean and every prompted feature set, a panel each, coloured by label."""
    from sklearn.manifold import TSNE

    from .evaluate import CLEAN, FEATURES_DIR, cell_key, slug

    plt = _pyplot()
    written = []
    prompts = [None, *(p["name"] for p in results["prompts"])]
    for model, name in model_names(results).items():
        paths = [output / FEATURES_DIR / f"{cell_key(model, p or CLEAN)}.npy" for p in prompts]
        if not all(p.is_file() for p in paths):
            log.warning("t-SNE for %s skipped: features missing (rerun tvp eval with --tsne)", model)
            continue
        feats = [np.load(p, allow_pickle=False) for p in paths]
        n = min(len(f) for f in feats)
        if n < 4:
            log.warning("t-SNE for %s skipped: %d samples (need 4)", model, n)
            continue
        joint = np.concatenate([f[:n] for f in feats]).astype(np.float64)
        emb = TSNE(n_components=2, perplexity=min(30.0, (len(joint) - 1) / 3), init="pca",
                   random_state=seed).fit_transform(joint)
        fig, axes = plt.subplots(1, len(prompts), figsize=(3.2 * len(prompts), 3.2), squeeze=False,
                                 sharex=True, sharey=True)
        cmap = plt.get_cmap("tab10")
        for i, p in enumerate(prompts):
            ax = axes[0, i]
            pts = emb[i * n:(i + 1) * n]
            idx, classes = _labels(output, model, p, n)
            ax.scatter(pts[:, 0], pts[:, 1], c=[cmap(k % 10) for k in idx], s=8)
            ax.set_title(p or "no prompt", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        shown = classes[:10]  # tab10: more classes than colours would repeat them
        handles = [plt.Line2D([], [], linestyle="none", marker="o", markersize=5,
                              color=cmap(k)) for k in range(len(shown))]
        fig.legend(handles, [str(c) for c in shown], title="label" + ("" if len(classes) <= 10 else " (first 10)"),
                   loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title_fontsize=8)
        fig.suptitle(f"{name}: vision features (t-SNE)", fontsize=10)
        written.append(_save(fig, output / f"tsne_{slug(name)}.png"))
    return written
