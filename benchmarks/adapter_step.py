"""Cost of one prompt-training step through the tvprompt adapters vs the raw HF forward.

Random-init real shapes (LLaVA-1.5-7B, InstructBLIP-Vicuna-7B; ``--tiny`` for a CPU smoke run),
bf16 on CUDA, SDPA, frozen weights. For each shape and batch size it times, per step:
- ``hf``: ``model(**inputs, labels=...)`` + backward to the pixels (the anchor's recipe, the
  pixels already at the tower's size);
- ``lm_loss``: ``adapter.lm_loss`` + backward (differentiable resize/normalise of 224² prompted
  pixels, left-padded batch, logits only for the answer positions);
- ``lm_loss+fca``: ``adapter.lm_loss_with_features(kind="encoder")`` + an FCA term, backward;
- ``score``: ``adapter.score_choices`` with 10 choices (no grad).

usage: python benchmarks/adapter_step.py [--tiny] [--batch 8 16] [--only llava,iblip] [--iters 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PROMPT = "What is the main object in the image? Answer with one word."
CHOICES = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring", "hexagon", "ellipse"]


def build(kind: str, tiny: bool, device: str, dtype: torch.dtype):
    from transformers import (
        CLIPVisionConfig,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from tvprompt.models.blip2 import QFormerAdapter
    from tvprompt.models.instructblip import InstructBlipAdapter
    from tvprompt.models.llava import LlavaAdapter
    from tvprompt.models.tiny import build_tokenizer

    tokenizer = build_tokenizer({"image_token": "<image>"})
    if kind == "llava":
        if tiny:
            v = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=336, patch_size=14)
            t = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=2, vocab_size=1000)
        else:
            v = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
            t = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
        cfg = LlavaConfig(vision_config=v, text_config=t, image_token_id=t.vocab_size - 1,
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
        cls, adapter_cls = LlavaForConditionalGeneration, LlavaAdapter
    else:
        if tiny:
            vc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=224, patch_size=14)
            qc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      encoder_hidden_size=64, vocab_size=1000)
            tc = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, vocab_size=1000)
        else:
            vc = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                      image_size=224, patch_size=14, qkv_bias=True)
            qc = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      encoder_hidden_size=1408, vocab_size=30523)
            tc = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32001, max_position_embeddings=2048)
        cfg = InstructBlipConfig(vision_config=vc, qformer_config=qc, text_config=tc, num_query_tokens=32,
                                 image_token_id=tc["vocab_size"] - 1)
        cls, adapter_cls = InstructBlipForConditionalGeneration, InstructBlipAdapter
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = cls(cfg)
    torch.set_default_dtype(old)
    pre = adapter_cls.default_preprocessing(cfg)
    adapter = adapter_cls(model, tokenizer, pre, f"random:{kind}", device=torch.device(device))
    if isinstance(adapter, QFormerAdapter):
        QFormerAdapter.setup(adapter, "")  # no checkpoint directory: skip loading a Q-Former tokenizer
    if isinstance(adapter, InstructBlipAdapter):
        adapter.qformer_tokenizer = tokenizer
    return adapter


def timed(fn, iters: int, device: str) -> float:
    for _ in range(2):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def measure(adapter, kind: str, tiny: bool, b: int, iters: int, device: str, dtype: torch.dtype) -> dict:
    from tvprompt.models.hf import pad_sequences

    prompts, answers = [PROMPT] * b, ["circle"] * b
    pixels = torch.rand(b, 3, 224, 224, device=device, requires_grad=True)
    # the raw HF recipe on the same token sequence (pixels already at the tower's size)
    answer = adapter.answer_ids("circle")
    ids, mask = pad_sequences([adapter.prompt_ids(PROMPT, (224, 224)) + answer] * b, adapter.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    labels = ids.clone()
    labels[:, : -len(answer)] = -100
    raw_pixels = torch.rand(b, 3, *adapter.input_size, device=device, dtype=dtype, requires_grad=True)
    extra = adapter.qformer_inputs(prompts) if kind == "iblip" else {}

    def hf_step():
        raw_pixels.grad = None
        adapter.model(input_ids=ids, attention_mask=mask, pixel_values=raw_pixels, labels=labels, **extra).loss.backward()

    def lm_step():
        pixels.grad = None
        adapter.lm_loss(pixels, prompts, answers).backward()

    def fca_step():
        pixels.grad = None
        loss, feats = adapter.lm_loss_with_features(pixels, prompts, answers, kind="encoder")
        (loss + 0.005 * 0.5 * (feats.float() - 0.1).pow(2).sum(-1).mean()).backward()

    def score_step():
        adapter.score_choices(pixels.detach(), prompts, CHOICES)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row = {"shape": kind + ("-tiny" if tiny else "-7b"), "batch": b, "dtype": str(dtype).replace("torch.", "")}
    for name, fn in [("hf", hf_step), ("lm_loss", lm_step), ("lm_loss+fca", fca_step), ("score", score_step)]:
        row[f"{name}_img_s"] = round(b / timed(fn, iters, device), 2)
    if device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    row["fca_overhead_pct"] = round(100 * (row["lm_loss_img_s"] / row["lm_loss+fca_img_s"] - 1), 1)
    return row


def run(kind: str, tiny: bool, batches: list[int], iters: int, device: str) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    adapter = build(kind, tiny, device, dtype)
    for b in batches:
        print(json.dumps(measure(adapter, kind, tiny, b, iters, device, dtype)), flush=True)
    del adapter
    if device == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--only", default="llava,iblip")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    for kind in args.only.split(","):
        run(kind, args.tiny, args.batch, args.iters, device)


if __name__ == "__main__":
    main()
