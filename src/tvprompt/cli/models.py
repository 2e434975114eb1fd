"""`tvp models`: the model families and guides this install supports."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model families and guides, with what each supports")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--check", metavar="MODEL_ID", help="load hf:<dir or id> / zoo:<name> and print what was found")
    p.add_argument("--guide", action="store_true", help="with --check: load it as a CLIP-like guide")
    p.add_argument("--device", default=None,
                   help="with --check: cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.catalog import catalog, markdown_table

    if args.check:
        return _check(args)
    if args.guide or args.device:
        raise UsageError("--guide and --device go with --check MODEL_ID")
    rows = catalog()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(rows))
        return 0
    yes = {True: "yes", False: "-"}
    header = ("NAME", "MODEL_TYPE", "SOURCE", "TARGET", "FCA FEATURES", "GUIDE", "EXTRA", "NOTES")
    table = [header] + [
        (r["name"], ",".join(r["model_types"]) or "-", yes[r["source"]], yes[r["target"]],
         ",".join(r["features"]) or "-", yes[r["guide"]], r["extra"] or "-", r["notes"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    print("\nModel ids: hf:<hub id or local dir> (family from config.json model_type), zoo:<name>;"
          " guides also open_clip:<arch>/<tag>.")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..models.registry import load_adapter, load_guide

    loaded = load_guide(args.check, device=args.device) if args.guide else load_adapter(args.check, device=args.device)
    pre = loaded.preprocessing
    info = {
        "model_id": args.check,
        "kind": "guide" if args.guide else "mllm",
        "family": getattr(loaded, "family", None) or getattr(loaded, "guide_type", None),
        "class": type(loaded.model).__name__,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "input_size": list(pre.size),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "resample": pre.resample,
        "shortest_edge": pre.shortest_edge,
    }
    if not args.guide:
        info["encoder_decoder"] = loaded.is_encoder_decoder
    print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0
