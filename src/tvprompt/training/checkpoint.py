"""Training checkpoints: everything a resumed run needs to end with the same δ bit for bit.

A checkpoint is a directory ``OUTPUT/checkpoint/`` written atomically (temp dir + rename):

- ``state.safetensors``: δ, the momentum buffer, the best-so-far δ, the numpy and torch RNG states;
- ``state.json``: step, data position, best validation metric, patience counter, the python RNG
  state and the resolved config.

Nothing is pickled: tensors go through safetensors, the rest through JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import TvpError
from ..files import atomic_dir

CHECKPOINT_DIR = "checkpoint"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The mutable state of a run between two updates."""

    step: int = 0  # updates done
    epoch: int = 0  # data position: epoch ...
    batch_in_epoch: int = 0  # ... and micro-batches of it consumed
    best_metric: float | None = None
    best_step: int | None = None
    bad_validations: int = 0  # validations since the last improvement (early stop)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # delta, momentum, best_delta


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The global python / numpy / torch (CPU and CUDA) RNG states, as JSON + tensors."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {"rng/numpy": torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)),
               "rng/torch": torch.get_rng_state()}
    for i in range(meta["cuda_devices"]):
        tensors[f"rng/cuda{i}"] = torch.cuda.get_rng_state(i)
    return meta, tensors


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_meta = meta["numpy"]
    keys = tensors["rng/numpy"].numpy().astype(np.uint32)
    np.random.set_state((np_meta["kind"], keys, np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"]))
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        for i in range(min(meta.get("cuda_devices", 0), torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"rng/cuda{i}"], i)


def save_checkpoint(output: str | Path, state: TrainState, config: dict[str, Any]) -> Path:
    """Write ``output/checkpoint`` atomically; returns its path."""
    from safetensors.torch import save_file

    rng_meta, rng_tensors = capture_rng()
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "library_version": __version__,
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "bad_validations": state.bad_validations,
        "rng": rng_meta,
        "config": config,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.tensors.items()}
    tensors.update(rng_tensors)
    path = Path(output) / CHECKPOINT_DIR
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def checkpoint_path(output: str | Path) -> Path:
    """``output/checkpoint``, or the previous checkpoint when a kill landed inside the atomic swap
    (``atomic_dir`` moves the old directory aside just before renaming the new one in)."""
    path = Path(output) / CHECKPOINT_DIR
    if not (path / STATE_JSON).is_file():
        aside = sorted(Path(output).glob(f".{CHECKPOINT_DIR}.*.old/d/{STATE_JSON}"))
        if aside:
            return aside[-1].parent
    return path


def has_checkpoint(output: str | Path) -> bool:
    return (checkpoint_path(output) / STATE_JSON).is_file()


def load_checkpoint(output: str | Path) -> tuple[TrainState, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``output/checkpoint``: (state, config dict, rng meta, rng tensors). RNGs are not restored here."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint_path(output)
    if not (path / STATE_JSON).is_file():
        raise TvpError(f"{path}: no checkpoint to resume from (run without --resume to start)")
    try:
        meta = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(path / STATE_TENSORS))
    except (OSError, ValueError, SafetensorError) as e:
        raise TvpError(f"{path}: unreadable checkpoint ({e}); start a new run with another --output") from None
    if meta.get("checkpoint_version", 0) > CHECKPOINT_VERSION:
        raise TvpError(f"{path}: written by a newer tvprompt; upgrade tvprompt to resume it")
    state = TrainState(
        step=meta["step"],
        epoch=meta["epoch"],
        batch_in_epoch=meta["batch_in_epoch"],
        best_metric=meta["best_metric"],
        best_step=meta["best_step"],
        bad_validations=meta["bad_validations"],
        tensors={k: v for k, v in tensors.items() if not k.startswith("rng/")},
    )
    rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    return state, meta["config"], meta["rng"], rng_tensors
