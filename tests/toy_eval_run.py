"""Run ``evaluate`` on the toy components in a subprocess (the sharded-evaluation test).

    python -m tests.toy_eval_run PROMPTS_DIR OUTPUT
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from tvprompt.evaluation.evaluate import EvalSetup, evaluate

from .eval_toys import toy_backends, toy_dataset


def main() -> int:
    prompts_dir, output = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    prompts = sorted(p for p in prompts_dir.iterdir() if p.is_dir())
    setup = EvalSetup(task="toy", data="unused", batch_size=3, tsne=True, tsne_samples=7)
    calls: dict = {}
    evaluate(prompts, ["toy:a", "toy:b"], setup, output, backends=toy_backends(calls, dataset=toy_dataset(11)))
    # what this process scored, so the test can tell that the work was split
    (output / f"calls-{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"images": calls.get("images", 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
