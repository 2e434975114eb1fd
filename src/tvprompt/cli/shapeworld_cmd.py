"""`tvp shapeworld`: write a ShapeWorld dataset (PNGs + a JSONL manifest)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..data.shapeworld import DISTRIBUTIONS, TASKS

    p = sub.add_parser("shapeworld", help="generate a ShapeWorld dataset: PNGs + manifest.jsonl")
    p.add_argument("--task", required=True, choices=TASKS, help="shape | color | count | exist")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--output", required=True, help="output folder (must be new or empty)")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="downstream",
                   help="pretrain (what the zoo saw) or downstream (shifted; default)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--split-mix", action="store_true", help="tag each sample train/val/test (60/20/20)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_shapeworld)


def cmd_shapeworld(args: argparse.Namespace) -> int:
    from ..data.shapeworld import write_dataset

    path = write_dataset(args.task, args.n, args.output, distribution=args.distribution, seed=args.seed,
                         split_mix=args.split_mix, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.n} images and {path}")
    return 0
