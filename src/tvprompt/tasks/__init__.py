"""Task specs: built-in YAML files under ``builtin/`` plus any user YAML with the same fields.

Adding a task is adding a file: ``builtin/<name>.yaml`` is found by :func:`list_tasks` and
:func:`load_task` with no code change.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..errors import TvpError
from .spec import KINDS, METRICS, SPEC_VERSION, TaskSpec, normalize_answer, refine_name

BUILTIN_DIR = Path(__file__).parent / "builtin"

__all__ = [
    "BUILTIN_DIR",
    "KINDS",
    "METRICS",
    "SPEC_VERSION",
    "TaskSpec",
    "list_tasks",
    "load_task",
    "normalize_answer",
    "refine_name",
]


def list_tasks() -> list[str]:
    """Names of the built-in tasks, sorted."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_task(name_or_path: str | os.PathLike | TaskSpec) -> TaskSpec:
    """A built-in task by name (``cifar10``), or a user's YAML file (``path/to/task.yaml``)."""
    if isinstance(name_or_path, TaskSpec):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not path.is_file():
            raise TvpError(f"{path}: task file not found")
        return TaskSpec.from_yaml(path)
    builtin = BUILTIN_DIR / f"{text}.yaml"
    if builtin.is_file():
        spec = TaskSpec.from_yaml(builtin)
        spec.source = f"builtin:{text}"
        return spec
    names = list_tasks()
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TvpError(f"unknown task {text!r}; {hint}`tvp tasks` lists the built-ins, or pass a .yaml file")
