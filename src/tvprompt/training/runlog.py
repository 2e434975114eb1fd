"""Run logging for the trainer: ``metrics.jsonl`` (+ optional TensorBoard), the progress bar, Ctrl-C."""

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
    """``metrics.jsonl`` (one JSON object per line, flushed) + optional TensorBoard."""

    def __init__(self, out: Path, keep_until: int, tensorboard: bool) -> None:
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
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("--tensorboard: the tensorboard package is not installed; logging to metrics.jsonl only")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")
        self.file.flush()
        if self.tb is not None:
            prefix = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "total_steps"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled or None, dynamic_ncols=True)


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
