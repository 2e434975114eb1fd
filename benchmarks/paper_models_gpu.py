"""GPU check of the paper families: the adapter contract on CUDA in bf16, and a 7B-shaped step time.

    PYTHONPATH=src python benchmarks/paper_models_gpu.py [results.json]

Part 1 builds tiny MiniGPT-4 / VPGTrans / BLIVA checkpoints, loads them on CUDA in bf16 and checks
that the gradient reaches every border pixel and nothing else, that ``score_choices`` matches
per-choice losses, and that ``generate`` runs. Part 2 times one prompt-training step (forward +
backward to the pixels, frozen weights) of a randomly initialised MiniGPT-4-7B-shaped model
(EVA ViT-g 39 blocks, 12-layer Q-Former, LLaMA-7B) at batch 8 and 32, to compare with the
InstructBLIP-7B anchor in DESIGN.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from tvprompt.models.minigpt4 import MiniGPT4Adapter
from tvprompt.models.paper_arch import MiniGPT4Config, MiniGPT4ForConditionalGeneration
from tvprompt.models.preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model, build_tokenizer
from tvprompt.prompt import VisualPrompt

PROMPTS = ["What shape is this?", "How many shapes are there?"]
CHOICES = ["circle", "red square", "3"]


def contract(family: str) -> dict:
    directory = build_tiny_model(family, Path(tempfile.mkdtemp()) / family, seed=0)
    adapter = load_adapter(f"hf:{directory}", device="cuda", dtype="bfloat16")
    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8).cuda()
    with torch.no_grad():
        prompt.delta.uniform_(0.2, 0.8)
    images = torch.rand(2, 3, 48, 48, device="cuda")
    loss = adapter.lm_loss(prompt.apply(images), PROMPTS, ["circle", "3"])
    loss.backward()
    grad, border = prompt.delta.grad.abs().sum(0), prompt.mask[0].bool()
    scores = adapter.score_choices(images, PROMPTS, CHOICES)
    with torch.no_grad():
        brute = torch.tensor([[-adapter.lm_loss(images[b : b + 1], [PROMPTS[b]], [c]).item() for c in CHOICES]
                              for b in range(2)])
    return {
        "loss": loss.item(),
        "every_border_pixel_has_gradient": bool((grad[border] > 0).all()),
        "no_gradient_off_border": bool((grad[~border] == 0).all()),
        "score_vs_per_choice_max_abs": float((scores.float().cpu() - brute).abs().max()),
        "generated": adapter.generate(images, PROMPTS, 4),
    }


def minigpt4_7b_shape() -> MiniGPT4Adapter:
    tok = build_tokenizer()
    config = MiniGPT4Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, initializer_range=0.02),
        qformer_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        text_config=dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        num_query_tokens=32, image_token_index=tok.convert_tokens_to_ids("<unk>"),
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = MiniGPT4ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    pre = ImagePreprocessing(size=(224, 224), mean=CLIP_MEAN, std=CLIP_STD)
    return MiniGPT4Adapter(model, tok, pre, "minigpt4-7b-shape", device=torch.device("cuda"))


def step_time(adapter: MiniGPT4Adapter, batch: int, warmup: int = 3, steps: int = 10) -> dict:
    prompt = VisualPrompt(image_height=224, image_width=224, prompt_width=30).cuda()
    images = torch.rand(batch, 3, 224, 224, device="cuda")
    prompts, answers = ["What is in the image? Answer with one word."] * batch, ["circle"] * batch
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        prompt.delta.grad = None
        adapter.lm_loss(prompt.apply(images), prompts, answers).backward()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / steps
    return {"img_per_s": round(batch / dt, 1), "step_ms": round(dt * 1e3, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}


def main() -> None:
    results: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                     "device": torch.cuda.get_device_name(0)}
    for family in ("minigpt4", "vpgtrans", "bliva"):
        results[family] = contract(family)
        print(family, results[family], flush=True)
    adapter = minigpt4_7b_shape()
    for batch in (8, 32):
        results[f"minigpt4_7b_step_B{batch}"] = step_time(adapter, batch)
        print(batch, results[f"minigpt4_7b_step_B{batch}"], flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
