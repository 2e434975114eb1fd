"""The benchmark command in its tiny CPU mode: it runs, and what it reports is consistent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["llava", "instructblip"])
def test_prompt_step_benchmark_tiny(tmp_path, family):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "r.json"
    md = tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.prompt_step", "--family", family, "--size", "tiny", "--batch", "2", "--choices", "4",
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


def test_real_shapes_have_the_released_parameter_counts(monkeypatch):
    """`--size 7b` builds the released architectures (counted on the meta device: no memory, no GPU)."""
    import torch
    import transformers

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.shapes import CONFIGS, build_adapter

    from tvprompt.models.tiny import tiny_tokenizer

    expected = {("llava", "7b"): 7.06e9, ("instructblip", "7b"): 7.91e9}  # LLaVA-1.5-7B, InstructBLIP-Vicuna-7B
    for key, n in expected.items():
        build_config, model_class = CONFIGS[key]
        with torch.device("meta"):
            model = getattr(transformers, model_class)(build_config(tiny_tokenizer(key[0])))
        assert abs(sum(p.numel() for p in model.parameters()) - n) / n < 0.01, key
    with pytest.raises(SystemExit, match="known: llava small, llava 7b, instructblip 7b"):
        build_adapter("qwen2_vl", "7b", device="cpu", dtype=torch.float32, attn="sdpa")


@pytest.mark.slow
def test_gpu_script_runs_every_measurement_in_tiny_cpu_mode(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", DEVICE="cpu", SIZE="tiny",
               PYTHON=sys.executable)
    res = subprocess.run(["bash", "benchmarks/gpu_all.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    for name in ("llava-b8", "llava-b32", "instructblip-b8", "instructblip-b32"):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["steps"]["llm+fca+tse"]["flops"] > result["steps"]["llm"]["flops"], name
    assert (tmp_path / "RESULTS-gpu.md").read_text().count("| llm+fca+tse |") == 4
    assert "failed" not in (tmp_path / "RESULTS-gpu.md").read_text()


@pytest.mark.slow
def test_prompt_step_benchmark_compiled_rows(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    out, md = tmp_path / "r.json", tmp_path / "RESULTS.md"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.prompt_step", "--family", "llava", "--size", "tiny", "--batch", "2",
         "--choices", "--no-careless", "--warmup", "0", "--iters", "1", "--compile", "default",
         "--json", str(out), "--markdown", str(md)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    terms = ("llm", "llm+fca", "llm+fca+tse")
    assert set(result["steps"]) == {*terms, *(f"{t} compiled" for t in terms)}
    for t in terms:
        eager, compiled = result["steps"][t], result["steps"][f"{t} compiled"]
        assert compiled["first_call_s"] >= compiled["compile_s"] >= 0 and compiled["flops"] == eager["flops"]
        assert abs(compiled["speedup_vs_eager"] - eager["seconds"] / compiled["seconds"]) < 1e-9
    assert result["compile"]["blocks"] == 8  # tiny LLaVA: 2 vision + 2 LLM layers; tiny CLIP guide: 2 + 2
    assert "| llm+fca+tse compiled |" in md.read_text() and "torch.compile (default" in md.read_text()
