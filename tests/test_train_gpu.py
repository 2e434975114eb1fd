"""GPU checks of the trainer (opt-in: ``pytest -m gpu``): bf16 models, δ in float32 on the device, ensembles."""

import json

import pytest
import torch

from tvprompt.models.tiny import build_tiny_model
from tvprompt.prompt import VisualPrompt
from tvprompt.training.loop import resolve_config, train

from .tiny_task import write_task

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_tvp_ensemble_on_cuda_in_bf16(tmp_path):
    llava = build_tiny_model("llava", tmp_path / "llava", seed=0)
    nxt = build_tiny_model("llava_next", tmp_path / "llava_next", seed=1)
    task, data = write_task(tmp_path)
    cfg = resolve_config("tvp", flags={
        "sources": [f"hf:{llava}", f"hf:{nxt}"], "task": str(task), "data": str(data), "output": str(tmp_path / "out"),
        "steps": 6, "batch_size": 8, "image_size": 64, "width": 8, "tse": 0.0, "fca": 0.5, "val_every": 3,
        "progress": False, "tensorboard": True,
    })
    result = train(cfg)
    rows = [r for r in result.history if "loss" in r]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["llm"], r["fca"]])).all() for r in rows)
    assert rows[0]["fca"] < 1e-6 < rows[-1]["fca"]  # zero at δ = 0 (bf16 features, same forward), then grows
    prompt = VisualPrompt.from_pretrained(tmp_path / "out" / "prompt")
    assert prompt.delta.dtype == torch.float32 and prompt.delta.abs().sum() > 0
    assert [s["family"] for s in prompt.config.sources] == ["llava", "llava_next"]
    assert any((tmp_path / "out" / "tensorboard").iterdir())
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"loss"' in x] == list(range(1, 7))
