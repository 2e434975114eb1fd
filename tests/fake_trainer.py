"""A stand-in for `python -m tvprompt train` (tests only): same flags, writes a real prompt directory.

Per step it appends {"step", "total_steps", "loss"} to OUTPUT/metrics.jsonl and sleeps
$TVP_FAKE_STEP_S (default 0.02 s). Task "fail" exits 3; task "spawn" also starts a child
process (its pid in OUTPUT/child.pid) so tests can check that cancel kills the whole group.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--method", required=True)
p.add_argument("--source", action="append", required=True)
p.add_argument("--task", required=True)
p.add_argument("--data", required=True)
p.add_argument("--guide")
p.add_argument("--output", required=True)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--batch-size", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

out = Path(args.output)
out.mkdir(parents=True, exist_ok=True)
n_lines = len(Path(args.data).read_text().splitlines())
if args.task == "fail":
    print(f"fake trainer: task 'fail' fails on purpose reading {args.data} into {args.output}", file=sys.stderr)
    print(f"  File \"{Path(__file__).resolve()}\", line 1", file=sys.stderr)
    sys.exit(3)
if args.task == "spawn":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (out / "child.pid").write_text(str(child.pid))
(out / "trainer.pid").write_text(str(os.getpid()))
import torch  # noqa: E402 - after the cheap failure paths

from tvprompt.prompt import VisualPrompt  # noqa: E402

step_s = float(os.environ.get("TVP_FAKE_STEP_S", "0.02"))
with open(out / "metrics.jsonl", "a") as fh:
    for step in range(1, args.steps + 1):
        time.sleep(step_s)
        fh.write(json.dumps({"step": step, "total_steps": args.steps, "loss": 1.0 / step}) + "\n")
        fh.flush()
task = args.task
if task.endswith(".yaml"):  # an uploaded dataset's task spec: the prompt carries its name
    import yaml

    task = yaml.safe_load(Path(task).read_text())["name"]
prompt = VisualPrompt(
    image_height=32, image_width=32, prompt_width=4, task=task, method=args.method, seed=args.seed,
    sources=[{"model_id": s} for s in args.source], data={"manifest_lines": n_lines},
    metrics={"val_accuracy": 0.5},
)
with torch.no_grad():
    prompt.delta.uniform_(0, 1, generator=torch.Generator().manual_seed(args.seed))
    prompt.project_()
prompt.save_pretrained(out / "prompt")
