"""What each registered family and guide supports: the table ``tvp models`` prints and the docs carry."""

from __future__ import annotations

from typing import Any

from .registry import get_family, get_guide_class, list_families, list_guides

_GUIDE_EXTRA = {"open_clip": "open_clip"}
_GUIDE_IDS = {"clip": "hf:<CLIPModel dir or id>", "siglip": "hf:<SiglipModel dir or id>",
              "open_clip": "open_clip:<arch>/<tag>"}


def catalog() -> list[dict[str, Any]]:
    """One row per family, then one per guide type."""
    rows: list[dict[str, Any]] = []
    for name in list_families():
        cls = get_family(name)
        rows.append({
            "name": name,
            "kind": "mllm",
            "display_name": cls.display_name or name,
            "model_types": list(cls.model_types),
            "llm": cls.llm,
            "source": "source" in cls.roles,
            "target": "target" in cls.roles,
            "features": list(cls.feature_kinds),
            "guide": False,
            "extra": cls.extra,
            "notes": cls.notes,
            "untested": cls.untested,  # why there are no offline tests (None: tested on a tiny checkpoint)
        })
    for name in list_guides():
        cls = get_guide_class(name)
        rows.append({
            "name": name,
            "kind": "guide",
            "display_name": (cls.__doc__ or name).strip().splitlines()[0],
            "model_types": [name] if name != "open_clip" else [],
            "llm": "",
            "source": False,
            "target": False,
            "features": [],
            "guide": True,
            "extra": _GUIDE_EXTRA.get(name),
            "notes": _GUIDE_IDS.get(name, ""),
            "untested": None,
        })
    return rows


def markdown_table(rows: list[dict[str, Any]] | None = None) -> str:
    """The catalog as a Markdown table (the same one docs/models.md shows)."""
    rows = catalog() if rows is None else rows
    yes = {True: "yes", False: "—"}
    lines = [
        "| name | model_type | LLM | source | target | FCA features | guide | extra |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']}{' (untested)' if r.get('untested') else ''} | {', '.join(r['model_types']) or '—'} | "
            f"{r['llm'] or '—'} | {yes[r['source']]} "
            f"| {yes[r['target']]} | {', '.join(r['features']) or '—'} | {yes[r['guide']]} | {r['extra'] or '—'} |"
        )
    return "\n".join(lines)
