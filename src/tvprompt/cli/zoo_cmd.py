"""`tvp zoo list` and `tvp zoo build`: the shipped mini zoo."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="the shipped mini zoo of tiny MLLMs and the CLIP guide")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")

    q = zsub.add_parser("list", help="list zoo models with their build-time accuracies")
    q.add_argument("--json", action="store_true", help="print the manifests as JSON")
    q.set_defaults(func=cmd_list)

    q = zsub.add_parser("build", help="train the zoo from scratch on ShapeWorld (deterministic)")
    q.add_argument("--output", help="zoo folder to write (default: the one inside the package)")
    q.add_argument("--only", nargs="+", metavar="NAME", help="build only these members")
    q.add_argument("--n-per-task", type=int, default=1500, help="training images per task (default 1500)")
    q.add_argument("--eval-per-task", type=int, default=100, help="evaluation images per task and distribution")
    q.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    q.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick smoke builds)")
    q.set_defaults(func=cmd_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{t}={v:.2f}" for t, v in acc.items())


def cmd_list(args: argparse.Namespace) -> int:
    from ..zoo.catalog import list_zoo, zoo_dir

    entries = list_zoo()
    if args.json:
        print(json.dumps([e.manifest for e in entries], indent=2))
        return 0
    if not entries:
        print(f"the zoo in {zoo_dir()} is empty: run `tvp zoo build`")
        return 0
    print(f"{'id':<20} {'architecture':<38} {'params':>8}  accuracy pretrain | downstream")
    for e in entries:
        acc = e.accuracy
        print(f"{e.model_id:<20} {e.manifest.get('architecture', '?'):<38} {e.manifest.get('parameters', 0):>8,}  "
              f"{_fmt(acc.get('pretrain', {}))} | {_fmt(acc.get('downstream', {}))}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..zoo.build import build_zoo
    from ..zoo.catalog import zoo_dir

    if args.n_per_task < 10 or args.eval_per_task < 1 or args.threads < 1 or args.scale <= 0:
        raise UsageError("--n-per-task must be >= 10, --eval-per-task, --threads and --scale positive")
    output = Path(args.output) if args.output else zoo_dir()
    t0 = time.time()
    manifests = build_zoo(output, names=args.only, n_per_task=args.n_per_task, eval_per_task=args.eval_per_task,
                          threads=args.threads, scale=args.scale, progress=True)
    for m in manifests:
        acc = m["accuracy"]
        print(f"zoo:{m['name']:<16} pretrain {_fmt(acc['pretrain'])} | downstream {_fmt(acc['downstream'])}")
    print(f"built {len(manifests)} zoo members into {output} in {time.time() - t0:.0f} s")
    return 0
