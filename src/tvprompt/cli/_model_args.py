"""The flags that say where and how models run, shared by `tvp eval` and `tvp analyze`
(`tvp train` has the same flags, defined by its TrainConfig fields)."""

from __future__ import annotations

import argparse
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models: where and how they run")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    g.add_argument("--device-map", choices=["auto"],
                   help="auto: spread each model over every visible GPU (accelerate big-model loading)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="model dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--revision", metavar="REV",
                   help="branch, tag or commit of the Hub models (org/name@REV sets it for one model)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow model families that run the checkpoint's own Python code (VisualGLM)")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_adapter`` keyword arguments from the flags above."""
    from ..errors import UsageError

    if args.device_map and args.device:
        raise UsageError("give --device or --device-map auto, not both")
    return {"device": "auto" if args.device_map else args.device, "dtype": args.dtype,
            "revision": args.revision, "trust_remote_code": args.trust_remote_code}
