"""`tvp demo`: VP vs EVP vs TVP on the shipped zoo, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._flags import deprecated_alias

ORDER = 5  # the first command a new user runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train VP/EVP/TVP on the mini zoo and print the transfer table (offline; "
                                    "under 2 minutes on 2 idle CPU cores)")
    p.add_argument("--output", default="tvp-demo", help="report folder (default ./tvp-demo)")
    p.add_argument("--quick", action="store_true", help="CI-sized run (9 s on 2 idle CPU cores)")
    p.add_argument("--seeds", type=int, default=1, help="repeat training with N seeds; report mean ± sd")
    p.add_argument("--task", default="shape", choices=["shape", "color", "count", "exist"],
                   help="ShapeWorld downstream task (default shape)")
    p.add_argument("--source", default=None, help="source model for single-model prompts (default zoo:llava-p8)")
    p.add_argument("--ensemble", nargs="+", metavar="MODEL",
                   help="also train prompts on this ensemble, e.g. zoo:llava-p8 zoo:blip2-opt (default: none)")
    p.add_argument("--targets", nargs="+", metavar="MODEL", help="models to evaluate on (default: every zoo MLLM)")
    p.add_argument("--methods", nargs="+", choices=["vp", "evp", "tvp"], help="methods (default: all three)")
    p.add_argument("--steps", type=int, help="prompt updates per run")
    p.add_argument("--n", dest="n_images", type=int, help="ShapeWorld images generated (split 60/20/20)")
    p.add_argument("--limit", dest="eval_limit", type=int,
                   help="test images per evaluation (a seeded subset, stratified by class)")
    deprecated_alias(p, "--n-images", "--n", "n_images", type=int)
    deprecated_alias(p, "--eval-limit", "--limit", "eval_limit", type=int)
    p.add_argument("--paper-defaults", action="store_true",
                   help="use every released hyper-parameter instead of the step sizes `--tune` chose")
    p.add_argument("--tune", action="store_true",
                   help="instead of the demo, choose each method's step size on the source model's validation "
                        "split (γ at ¼, 1 and 4 times the released value, each trained with --seeds seeds; "
                        "the best mean wins; writes tuning/tuning.json)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..demo import DemoConfig, render, run_demo, run_tuning

    torch.set_num_threads(min(2, torch.get_num_threads()))
    overrides = {"output": args.output, "seeds": args.seeds, "task": args.task, "progress": args.progress,
                 "paper_defaults": args.paper_defaults}
    for key in ("source", "ensemble", "targets", "methods", "steps", "n_images", "eval_limit"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    if args.tune:
        result = run_tuning(cfg)
        print((Path(args.output) / "tuning" / "tuning.md").read_text(encoding="utf-8"))
        print(f"chosen step sizes: {result['chosen']} (the demo's own are tvprompt.demo.TUNED) "
              f"in {result['seconds']:.0f} s")
        return 0
    summary = run_demo(cfg)
    print(render(summary))
    print(f"report written to {args.output}/ (table.md, summary.json, transfer.png, eval/*/) "
          f"in {summary['seconds']['total']:.0f} s")
    return 0
