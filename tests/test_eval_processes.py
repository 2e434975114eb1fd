"""`tvp eval` sharded over two gloo processes (accelerate launch) gives exactly the one-process results."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .eval_toys import make_prompt
from .test_train_processes import ROOT, _env, _free_port


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("created", "seconds")}


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tmp_path):
    from tvprompt import VisualPrompt

    prompts = tmp_path / "prompts"
    make_prompt(prompts / "border", 0.9, channel=0, sources=["toy:a"])
    patch = VisualPrompt(shape="random_patch", image_height=32, image_width=32, patch_size=9, method="vp", seed=3,
                         sources=[{"model_id": "toy:b"}])
    with __import__("torch").no_grad():
        patch.delta.fill_(0.8)
    patch.save_pretrained(prompts / "patch")
    one = subprocess.run([sys.executable, "-m", "tests.toy_eval_run", str(prompts), str(tmp_path / "one")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "tests.toy_eval_run", str(prompts), str(tmp_path / "two")]
    two = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1 of 2" in two.stderr
    scored = [json.loads((tmp_path / "two" / f"calls-{r}.json").read_text())["images"] for r in (0, 1)]
    total = json.loads((tmp_path / "one" / "calls-0.json").read_text())["images"]
    assert sum(scored) == total and min(scored) > 0  # each process scored its share, none all of it
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [c["n"] for c in a["cells"]] == [11] * 6
    assert _strip(a) == _strip(b)
    assert (tmp_path / "one" / "samples.jsonl").read_text() == (tmp_path / "two" / "samples.jsonl").read_text()
    for f in sorted((tmp_path / "one" / "features").iterdir()):
        x, y = np.load(f), np.load(tmp_path / "two" / "features" / f.name)
        assert x.shape == (7, 3) and np.array_equal(x, y)
