"""Experiment trackers (``--report-to``) through accelerate's tracker classes.

Every metric row of the trainer (each update, each validation) goes to every tracker, keyed
``train/loss``, ``val/accuracy``, ...; the resolved config is stored as the run's hyper-parameters.
Trackers only run on the main process; ``metrics.jsonl`` is always written whatever is chosen.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError

log = logging.getLogger(__name__)

# accelerate's names (accelerate.utils.LoggerType) -> the package each one needs
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}
REPORT_TO = ("none", "all", *TRACKER_PACKAGES)


def check_report_to(names: list[str]) -> list[str]:
    """Validate ``--report-to`` names (``none`` = nothing, ``all`` = every installed tracker)."""
    for name in names:
        if name not in REPORT_TO:
            raise UsageError(f"field 'report_to': {name!r} is not one of {', '.join(REPORT_TO)}")
    if "none" in names and len(names) > 1:
        raise UsageError("field 'report_to': 'none' cannot be combined with other trackers")
    return [n for n in dict.fromkeys(names) if n != "none"]


def installed(name: str) -> bool:
    return importlib.util.find_spec(TRACKER_PACKAGES[name]) is not None


def resolve_trackers(names: list[str]) -> list[str]:
    """The tracker names to open: ``all`` = the installed ones; a named one must be installed."""
    names = check_report_to(names)
    if "all" in names:
        return [n for n in TRACKER_PACKAGES if installed(n)]
    for name in names:
        if not installed(name):
            raise UsageError(
                f"--report-to {name}: the {TRACKER_PACKAGES[name]} package is not installed; "
                f"pip install 'tvprompt[{name}]' (or pip install {TRACKER_PACKAGES[name]})"
            )
    return names


def _hparam(value: Any) -> bool | int | float | str:
    """Trackers take scalars and strings only: lists and dicts as JSON, None as 'none'."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else json.dumps(value)


class Trackers:
    """Open trackers of one run: ``log(row)`` for each metric row, ``close()`` at the end."""

    def __init__(self, names: list[str], out: Path | None, run_name: str, config: dict[str, Any]) -> None:
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        PartialState()  # accelerate's tracker logging needs it (a launched run already made it in init_world)
        self.trackers = []
        for name in resolve_trackers(names):
            cls = LOGGER_TYPE_TO_CLASS[name]
            if cls.requires_logging_directory:
                if out is None:
                    raise UsageError(f"--report-to {name} writes into --output; give one")
                # tensorboard: OUTPUT/tensorboard, as the --tensorboard flag always wrote
                tracker = cls(name if name == "tensorboard" else run_name, str(out))
            else:
                tracker = cls(run_name)
            tracker.main_process_only = False  # only the main process opens trackers at all
            tracker.start()
            tracker.store_init_configuration({k: _hparam(v) for k, v in config.items()})
            self.trackers.append(tracker)
            log.info("reporting to %s", name)

    def log(self, row: dict[str, Any]) -> None:
        prefix = row.get("split") or "train"
        values = {f"{prefix}/{k}": v for k, v in row.items()
                  if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "total_steps")}
        for tracker in self.trackers:
            tracker.log(values, step=int(row["step"]))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
