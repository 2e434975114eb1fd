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
        [sys.executable, "-m", "benchmarks.prompt_step", "--family", family, "--size", "tiny", "--batch", "2", "3",
         "--choices", "4", "--warmup", "0", "--iters", "1", "--json", str(out), "--markdown", str(md)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [b["batch"] for b in result["batches"]] == [2, 3]  # one model, several batch sizes
    for b in result["batches"]:
        assert set(b["steps"]) == {"llm", "llm+fca", "llm+fca+tse", "hf"}
        for row in b["steps"].values():
            assert row["seconds"] > 0 and row["flops"] > 0
            assert abs(row["images_per_s"] - b["batch"] / row["seconds"]) < 1e-6
        # the TVP step does strictly more arithmetic than the L_LLM step (FCA, guide forward + backward)
        assert b["steps"]["llm+fca+tse"]["flops"] > b["steps"]["llm"]["flops"]
        assert b["careless_step"]["seconds"] > 0
        ours, hf = b["steps"]["llm+fca+tse"], b["steps"]["hf"]
        # the trainer's step makes the host wait for the device no more often than transformers' own
        # forward does (no .item(), no boolean indexing), and adds a fixed few operators (prompt,
        # preprocessing, loss, update), not a number that grows with the model's depth
        assert sum(ours["syncs"].values()) <= sum(hf["syncs"].values()), (ours["syncs"], hf["syncs"])
        assert 0 < b["steps"]["llm"]["ops"] - hf["ops"] <= 150
    # FLOPs grow with the batch
    assert result["batches"][1]["steps"]["llm"]["flops"] > result["batches"][0]["steps"]["llm"]["flops"]
    rank = result["ranking"]["4"]
    assert rank["max_abs_diff"] < 1e-4  # KV-cached ranking equals one forward per choice
    assert rank["speedup"] > 0 and rank["per_row_s"] > 0
    text = md.read_text()
    assert "| 3 | llm+fca+tse |" in text and "| 2 | hf |" in text and "| unpacked ms |" in text


RELEASED = {  # parameters of the released checkpoints whose shapes --size builds
    ("llava", "7b"): 7.06e9, ("instructblip", "7b"): 7.91e9, ("minigpt4", "7b"): 7.83e9,
    ("qwen2_vl", "2b"): 2.21e9, ("qwen2_5_vl", "3b"): 3.75e9, ("smolvlm", "256m"): 0.256e9,
    ("paligemma", "3b"): 2.92e9, ("gemma3", "4b"): 4.30e9,
}


@pytest.mark.parametrize("key", list(RELEASED), ids=[f"{f}-{s}" for f, s in RELEASED])
def test_real_shapes_have_the_released_parameter_counts(monkeypatch, key):
    """`--size` builds the released architectures (counted on the meta device: no memory, no GPU)."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.shapes import CONFIGS

    from tvprompt.models.hf import resolve_model_class
    from tvprompt.models.registry import get_family
    from tvprompt.models.tiny import tiny_tokenizer

    with torch.device("meta"):
        model = resolve_model_class(get_family(key[0]).model_class)(CONFIGS[key](tiny_tokenizer(key[0])))
    n = RELEASED[key]
    assert abs(sum(p.numel() for p in model.parameters()) - n) / n < 0.01, key


def test_narrowed_shape_keeps_the_depth_and_runs_a_step(monkeypatch):
    """`--narrow`: every layer of InstructBLIP-Vicuna-7B, tiny widths; one L_LLM step reaches the pixels."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.shapes import build_adapter

    adapter = build_adapter("instructblip", "7b", device="cpu", dtype=torch.float32, narrowed=True)
    config = adapter.model.config
    depths = (config.vision_config.num_hidden_layers, config.qformer_config.num_hidden_layers,
              config.text_config.num_hidden_layers)
    assert depths == (39, 12, 32)
    assert sum(p.numel() for p in adapter.model.parameters()) < 2e6
    pixels = torch.rand(2, 3, 64, 64, requires_grad=True)
    adapter.lm_loss(pixels, ["What shape is this?"] * 2, ["a circle", "a red star"]).backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_unknown_shape_names_the_known_ones(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.shapes import build_adapter

    with pytest.raises(SystemExit, match="known: llava small, llava 1b, llava 7b, instructblip 7b"):
        build_adapter("qwen2_vl", "7b", device="cpu", dtype=torch.float32)


@pytest.mark.slow
def test_gpu_script_runs_every_measurement_in_tiny_cpu_mode(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", DEVICE="cpu", SIZE="tiny",
               PYTHON=sys.executable)
    res = subprocess.run(["bash", "benchmarks/gpu_all.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    families = ["llava", "instructblip", "minigpt4", "qwen2_vl", "qwen2_5_vl", "smolvlm", "paligemma", "gemma3"]
    for family in families:
        result = json.loads((tmp_path / f"{family}.json").read_text())
        for b in result["batches"]:
            assert b["steps"]["llm+fca+tse"]["flops"] > b["steps"]["llm"]["flops"], family
    assert [b["batch"] for b in json.loads((tmp_path / "llava.json").read_text())["batches"]] == [8, 16, 32]
    text = (tmp_path / "RESULTS-gpu.md").read_text()
    assert text.count("| llm+fca+tse |") == 2 * 3 + 6
    assert "failed" not in text
    assert " passed" in (tmp_path / "gpu-tests.log").read_text()


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
    (b,) = result["batches"]
    terms = ("llm", "llm+fca", "llm+fca+tse", "hf")
    assert set(b["steps"]) == {*terms, *(f"{t} compiled" for t in terms)}
    for t in terms:
        eager, compiled = b["steps"][t], b["steps"][f"{t} compiled"]
        assert compiled["first_call_s"] >= compiled["compile_s"] >= 0 and compiled["flops"] == eager["flops"]
        assert abs(compiled["speedup_vs_eager"] - eager["seconds"] / compiled["seconds"]) < 1e-9
    assert result["compile"]["blocks"] == 8  # tiny LLaVA: 2 vision + 2 LLM layers; tiny CLIP guide: 2 + 2
    text = md.read_text()
    assert "| 2 | llm+fca+tse compiled |" in text and "eager/compiled step time llm " in text
