"""`tvp eval`: the transfer matrix of prompts × models on one task, with a Table-1-style report.

``accelerate launch -m tvprompt eval ...`` shards the samples over the processes (one per GPU);
the results are those of one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ._model_args import add_model_args, load_options

ORDER = 60  # `tvp --help` lists commands by ORDER


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate prompts (and no prompt) on models; write results, table and plots")
    p.add_argument("--prompt", action="extend", nargs="+", default=[], metavar="DIR",
                   help="prompt directories or Hub repo ids user/name[@revision] (several after one flag, or the flag "
                        "repeated)")
    p.add_argument("--model", action="extend", nargs="+", required=True, metavar="MODEL",
                   help="model ids: hf:<id or dir> or zoo:<name> (several after one flag, or the flag repeated)")
    p.add_argument("--task", required=True, help="built-in task name or task YAML file")
    p.add_argument("--data", required=True, metavar="PATH", help="dataset folder or file")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate N samples only: a subset seeded by --seed, stratified by class")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="samples per batch; each adapter call holds B × (pending cells) images (default 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="data seed (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation length for open tasks")
    p.add_argument("--corruption", help="evaluate on corrupted images: a CIFAR-10-C / ImageNet-C corruption "
                   "(gaussian_noise, ..., jpeg_compression; strengths set by --corruption-strength)")
    p.add_argument("--severity", type=int, default=3, help="corruption severity 1-5 (default 3)")
    p.add_argument("--corruption-strength", choices=["cifar10c", "imagenetc"], default="cifar10c",
                   help="whose constants: cifar10c (default; made for 32 px) or imagenetc (made for 224 px, "
                   "for images of 224 px and more); spatial sizes scale with the image side")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="side images are loaded at before prompting (default: the first prompt's height, else 224)")
    p.add_argument("--tsne", action="store_true", help="also save vision features and plot clean vs prompted t-SNE")
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="image-decoding worker processes (default: up to 4 on a GPU, 0 on a CPU)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (rerun to resume)")
    p.add_argument("--label", action="extend", nargs="+", metavar="NAME",
                   help="row names of the prompts, in --prompt order (default: from each prompt's config, e.g. "
                        "tvp@llava-p8)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (for scripts) instead of the table")
    add_model_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_eval)


def eval_summary(results: dict, output: str) -> dict:
    """What ``tvp eval --json`` prints: the primary metric per (prompt | none) × model, and the mean Δ."""
    metric = results["primary_metric"]
    return {
        "output": str(output),
        "results": str(Path(output) / "results.json"),
        "task": results["task"]["name"],
        "metric": metric,
        "models": [m["id"] for m in results["models"]],
        "clean": {m: v.get(metric) for m, v in results["clean"].items()},
        "prompted": {p: {m: row["prompted"].get(metric) for m, row in rows.items()}
                     for p, rows in results["transfer"].items()},
        "average_delta": {p: d["all"].get(metric) for p, d in results["average_delta"].items()},
        "samples": {c["model"]: int(c["n"]) for c in results["cells"] if c["prompt"] is None},
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import Backends, EvalSetup, evaluate
    from ..evaluation.report import TABLE_NAME, write_report

    setup = EvalSetup(
        task=args.task, data=args.data, split=args.split, limit=args.limit, batch_size=args.batch_size,
        seed=args.seed, max_new_tokens=args.max_new_tokens, corruption=args.corruption,
        severity=args.severity if args.corruption else None, corruption_strength=args.corruption_strength,
        tsne=args.tsne, image_size=args.image_size,
        num_workers=args.num_workers, progress=args.progress,
    )
    command = shlex.join(["tvp", *sys.argv[1:]]) if sys.argv[1:] else None
    results = evaluate(args.prompt, args.model, setup, args.output, command=command, names=args.label,
                       backends=Backends.default(**load_options(args)))
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process reports
        return 0
    written = write_report(args.output, tsne=args.tsne)
    if args.json:
        print(json.dumps(eval_summary(results, args.output)))
        return 0
    table = next(p for p in written if p.name == TABLE_NAME)
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {args.output}/results.json, samples.jsonl and {len(written)} report file(s)")
    return 0
