"""Run logging for the trainer: ``metrics.jsonl``, the progress bar, Ctrl-C (trackers: ``trackers.py``)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..files import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line, flushed)."""

    def __init__(self, out: Path, keep_until: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        kept = []
        if keep_until and self.path.exists():  # resume: drop rows logged after the checkpoint
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if row.get("step", 0) <= keep_until:
                        kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on a terminal; off when disabled or when stderr is not a terminal (``bar.disable``)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled or None,
                dynamic_ncols=True)


def log_every(total: int) -> int:
    """Steps between progress log lines when there is no bar: about 20 lines per run (every step for short runs)."""
    return max(1, total // 20)


def step_line(row: dict[str, Any]) -> str:
    """One update as a log line: ``step 40/200 loss 1.234 llm 1.2 fca 0.05 lr 9.1``."""
    parts = [f"step {row['step']}/{row['total_steps']}", f"loss {row['loss']:.4g}"]
    parts += [f"{k} {row[k]:.4g}" for k in ("llm", "fca", "tse") if row.get(k)]
    parts.append(f"lr {row['lr']:.4g}")
    return " ".join(parts)


def validation_line(row: dict[str, Any]) -> str:
    """A validation result as a log line: ``validation at step 40: accuracy 0.8125 on 64 samples``."""
    extra = ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items() if k.startswith("accuracy/"))
    return (f"validation at step {row['step']}: accuracy {row['accuracy']:.4f} on {int(row['samples'])} samples"
            + (f" ({extra})" if extra else ""))


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """First Ctrl-C sets a flag the loop checks after each update; a second one interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        flag.set()
        signal.signal(signal.SIGINT, previous)
        log.warning("Ctrl-C: finishing this step and saving a checkpoint (press again to abort at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
