"""`tvp tasks`: list the built-in tasks, or show one task (built-in name or YAML file)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..errors import TvpError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list built-in tasks (kind, number of choices, metrics) or show one")
    p.add_argument("task", nargs="?", metavar="TASK", help="a built-in name or a task .yaml file to show in full")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--data", metavar="PATH", help="with TASK: open PATH as this task's dataset and print the splits")
    p.add_argument("--format", help="with --data: force a reader (default: detected from the layout)")
    p.add_argument("--seed", type=int, default=0, help="with --data: seed of the carved val split")
    p.set_defaults(func=cmd_tasks)


def _choices_count(spec) -> str:
    return str(len(spec.choices)) if spec.choices is not None else "data"


def cmd_tasks(args: argparse.Namespace) -> int:
    from ..tasks import list_tasks, load_task

    if args.data and not args.task:
        raise UsageError("--data needs a TASK (a built-in name or a .yaml file)")
    if args.task:
        spec = load_task(args.task)
        if args.data:
            return _show_data(spec, args)
        if args.json:
            print(json.dumps(spec.to_dict(), indent=2))
            return 0
        rows = [
            ("name", spec.name),
            ("kind", spec.kind),
            ("description", spec.description or "-"),
            ("format", spec.format or "auto"),
            ("instruction", spec.instruction),
            *((f"instruction[{k}]", v) for k, v in sorted(spec.instruction_by_family.items())),
            ("answer", spec.answer),
            ("choices", f"{_choices_count(spec)}: " + ", ".join((spec.choices or [])[:12])
             + (" ..." if spec.choices and len(spec.choices) > 12 else "")),  # fmt: skip
            ("tse_text", spec.tse_text or "- (no TSE)"),
            ("metrics", ", ".join(spec.metrics)),
            ("splits", ", ".join(f"{k}={v if v is not None else 'carved'}" for k, v in spec.splits.items())),
        ]
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
        return 0
    specs = [load_task(name) for name in list_tasks()]
    if args.json:
        print(json.dumps([{"name": s.name, "kind": s.kind, "choices": len(s.choices) if s.choices else None,
                           "metrics": s.metrics, "description": s.description} for s in specs], indent=2))  # fmt: skip
        return 0
    rows = [("TASK", "KIND", "CHOICES", "METRICS", "DESCRIPTION")]
    rows += [(s.name, s.kind, _choices_count(s), ",".join(s.metrics), s.description) for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0


def _show_data(spec, args: argparse.Namespace) -> int:
    from ..data import open_dataset

    ok = 0
    for split in ("train", "val", "test"):
        try:
            ds = open_dataset(spec, args.data, split, seed=args.seed, format=args.format)
        except UsageError:
            raise
        except TvpError as e:
            print(f"{split:<5}  -  ({e})")
            continue
        if not ok:
            print(f"data   {ds.source}")
        ok += 1
        counts = Counter(s.answer for s in ds.samples)
        top = ", ".join(f"{a} {n}" for a, n in counts.most_common(3))
        print(f"{split:<5}  {len(ds)} samples, {len(counts)} distinct answers "
              f"({top}{', ...' if len(counts) > 3 else ''})")
    return 0 if ok else 1
