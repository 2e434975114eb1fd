"""`tvp models`: the supported model families, what they can be used for, and how well tested."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the supported model families")
    p.add_argument("--json", action="store_true", help="print one JSON object per family")
    p.set_defaults(func=cmd_models)


def family_rows() -> list[dict[str, Any]]:
    from ..models.registry import get_family, list_families
    from ..models.tiny import tiny_families

    tiny = set(tiny_families())
    rows = []
    for key in list_families():
        cls = get_family(key)
        untested = getattr(cls, "untested", None)
        rows.append({
            "family": key,
            "name": getattr(cls, "display_name", "") or key,
            "model_types": list(getattr(cls, "model_types", ())),
            "roles": list(getattr(cls, "roles", ())) + ["fca"] * bool(getattr(cls, "feature_kinds", ())),
            "features": list(getattr(cls, "feature_kinds", ())),
            "extra": getattr(cls, "extra", None),
            "status": untested or ("tested offline on a tiny checkpoint" if key in tiny else "no offline tests"),
            "notes": getattr(cls, "notes", "") or "",
        })
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = family_rows()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max(len(r["family"]) for r in rows)
    for r in rows:
        print(f"{r['family']:<{width}}  {r['name']}  [model_type: {', '.join(r['model_types'])}]")
        print(f"{'':<{width}}  use as: {', '.join(r['roles'])}; features: {', '.join(r['features'])}")
        if r["extra"]:
            print(f"{'':<{width}}  needs: {r['extra']}")
        print(f"{'':<{width}}  status: {r['status']}")
        if r["notes"] and r["notes"] != r["status"]:
            print(f"{'':<{width}}  {r['notes']}")
    return 0
