"""The benchmark command in its tiny CPU mode: it runs, and what it reports is consistent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_prompt_step_benchmark_tiny(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "r.json"
    md = tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.prompt_step", "--size", "tiny", "--batch", "2", "--choices", "4",
         "--warmup", "0", "--iters", "1", "--json", str(out), "--markdown", str(md)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["steps"]) == {"llm", "llm+fca", "llm+fca+tse"}
    for row in result["steps"].values():
        assert row["seconds"] > 0 and row["flops"] > 0
        assert abs(row["images_per_s"] - 2 / row["seconds"]) < 1e-6
    # the TVP step does strictly more arithmetic than the L_LLM step (FCA, guide forward + backward)
    assert result["steps"]["llm+fca+tse"]["flops"] > result["steps"]["llm"]["flops"]
    assert result["careless_step"]["seconds"] > 0
    rank = result["ranking"]["4"]
    assert rank["max_abs_diff"] < 1e-4  # KV-cached ranking equals one forward per choice
    assert rank["speedup"] > 0 and rank["per_row_s"] > 0
    assert "| llm+fca+tse |" in md.read_text() and "| unpacked ms |" in md.read_text()
