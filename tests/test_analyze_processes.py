"""`tvp analyze` sharded over two gloo processes (accelerate launch) gives exactly the one-process results,
through several evaluations in one run (the process group is joined once per analysis)."""

import json
import subprocess
import sys

import pytest

from .test_train_processes import ROOT, _env, _free_port


def _strip(doc: dict) -> dict:
    """The results less the time stamp and the prompt's folder (under each run's own output)."""
    for p in doc["prompts"]:
        p.pop("path")
    return {k: v for k, v in doc.items() if k not in ("created", "seconds")}


@pytest.mark.slow
def test_two_processes_give_the_one_process_analysis(tmp_path):
    one = subprocess.run([sys.executable, "-m", "tests.toy_analyze_run", str(tmp_path / "one")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tests.toy_analyze_run", str(tmp_path / "two")]
    two = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 1 of 2" in two.stderr
    scored = [json.loads((tmp_path / "two" / f"calls-{r}.json").read_text())["images"] for r in (0, 1)]
    total = json.loads((tmp_path / "one" / "calls-0.json").read_text())["images"]
    assert sum(scored) == total and min(scored) > 0  # each process scored its share of both evaluations
    a = json.loads((tmp_path / "one" / "corruption.json").read_text())
    b = json.loads((tmp_path / "two" / "corruption.json").read_text())
    assert a["corruptions"] == ["gaussian_noise", "shot_noise"] and len(a["grid"]) == 2
    assert a.pop("prompt").endswith("one/train/prompt/prompt") and b.pop("prompt").endswith("two/train/prompt/prompt")
    assert a == b
    for sub in ("gaussian_noise-3", "shot_noise-3"):
        ra = json.loads((tmp_path / "one" / "eval" / sub / "results.json").read_text())
        rb = json.loads((tmp_path / "two" / "eval" / sub / "results.json").read_text())
        assert [c["n"] for c in ra["cells"]] == [11] * 4
        assert _strip(ra) == _strip(rb)
    assert (tmp_path / "one" / "corruption.md").read_text() == (tmp_path / "two" / "corruption.md").read_text()
    assert (tmp_path / "two" / "train" / "prompt" / "recipe.json").is_file()
