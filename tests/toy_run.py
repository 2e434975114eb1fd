"""Run the trainer on the toy components in a subprocess (resume-after-kill and data-parallel tests).

    python -m tests.toy_run OUTPUT [--resume] [--steps N] [--sleep S] [--method M] [--batch-size B]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from tvprompt.errors import TvpError
from tvprompt.training.loop import resolve_config, train

from .toy import ToyAdapter, ToyDataset, ToyGuide, ToySpec, toy_batches


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--method", default="tvp")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=1)
    p.add_argument("--jitter", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)

    def batches(*a, **kw):
        for b in toy_batches(*a, **kw):
            time.sleep(args.sleep)
            yield b

    cfg = resolve_config(args.method, flags={
        "sources": ["toy-0", "toy-1"], "task": "toy", "data": "toy", "guide": "toy-guide", "output": args.output,
        "steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum, "image_size": 16,
        "width": 3, "val_every": 4, "ckpt_every": args.ckpt_every, "progress": False, "seed": 3,
        "jitter_scale": args.jitter, "jitter_translate": args.jitter,
    })
    try:
        result = train(cfg, resume=args.resume, sources=[ToyAdapter(0), ToyAdapter(1)], guide=ToyGuide(),
                       spec=ToySpec(), train_set=ToyDataset(30), val_set=ToyDataset(9, seed=1), batch_fn=batches)
    except TvpError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"done step={result.step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
