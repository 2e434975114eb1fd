"""Run one analysis (``corruption``: a trained prompt, then one evaluation per corruption) on the toy
components in a subprocess, for the sharded-analysis test.

    python -m tests.toy_analyze_run OUTPUT
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from tvprompt.evaluation.analyses import TrainRecipe, corruption
from tvprompt.evaluation.evaluate import EvalSetup

from .eval_toys import make_prompt, toy_backends, toy_dataset


def fake_trainer(recipe: TrainRecipe, output: Path) -> Path:
    """Like the project trainer under several processes: every process trains, the main one writes."""
    if os.environ.get("RANK", "0") == "0":
        make_prompt(output / "prompt", 0.7, width=recipe.width // 5, size=32, channel=0, sources=recipe.sources,
                    method=recipe.method)
    return output / "prompt"


def main() -> int:
    output = Path(sys.argv[1])
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    setup = EvalSetup(task="toy", data="unused", batch_size=3)
    base = TrainRecipe(sources=["toy:a"], task="toy", data="unused", width=20)
    calls: dict = {}
    corruption(["toy:a", "toy:b"], setup, output, base=base, trainer=fake_trainer, reduced=True,
               backends=toy_backends(calls, dataset=toy_dataset(11)))
    # what this process scored, so the test can tell that the work was split
    (output / f"calls-{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"images": calls.get("images", 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
