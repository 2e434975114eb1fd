"""One prompt-training step (forward + backward to the pixels) on real-shape, randomly initialised
Qwen2-VL-2B, Qwen2.5-VL-3B, SmolVLM-256M, PaliGemma-3B-224 and Gemma-3-4B, through the adapters.

Checks on the way: gradients reach the pixels and are finite, cached ``score_choices`` matches
per-choice forwards (in the run's dtype), ``generate`` runs. Prints one JSON line per family.

    python benchmarks/extra_families_step.py                 # CUDA, bf16, SDPA
    python benchmarks/extra_families_step.py --tiny          # the tiny test configs, CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import torch

from tvprompt.models.registry import get_family
from tvprompt.models.tiny import tiny_config, tiny_tokenizer

QWEN_TEXT = dict(vocab_size=151936, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})


def real_config(family: str, tok: Any) -> Any:
    import transformers as tf

    ids = tok.convert_tokens_to_ids
    if family == "qwen2_vl":  # Qwen2-VL-2B
        return tf.Qwen2VLConfig(
            text_config=dict(QWEN_TEXT, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                             num_attention_heads=12, num_key_value_heads=2, pad_token_id=0),
            vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if family == "qwen2_5_vl":  # Qwen2.5-VL-3B
        return tf.Qwen2_5_VLConfig(
            text_config=dict(QWEN_TEXT, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                             num_attention_heads=16, num_key_value_heads=2, pad_token_id=0),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if family == "smolvlm":  # SmolVLM-256M
        return tf.SmolVLMConfig(
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=512, patch_size=16),
            text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                             num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, pad_token_id=0,
                             max_position_embeddings=8192),
            scale_factor=4, image_token_id=ids("<image>"))
    if family == "paligemma":  # PaliGemma-3B-224
        return tf.PaliGemmaConfig(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                               num_hidden_layers=27, num_attention_heads=16, image_size=224, patch_size=14,
                               projection_dim=2048),
            text_config=dict(model_type="gemma", vocab_size=257216, hidden_size=2048, intermediate_size=16384,
                             num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                             pad_token_id=0),
            image_token_index=ids("<image>"), projection_dim=2048, hidden_size=2048, vocab_size=257216)
    if family == "gemma3":  # Gemma-3-4B
        return tf.Gemma3Config(
            vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                               num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14),
            text_config=dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024,
                             query_pre_attn_scalar=256, pad_token_id=0),
            mm_tokens_per_image=256, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"))
    raise ValueError(family)


def build(family: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    import transformers

    cls = get_family(family)
    tok = tiny_tokenizer(family)
    config = tiny_config(family, tok) if tiny else real_config(family, tok)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = getattr(transformers, cls.model_class)(config).to(dtype)
    proj = getattr(model.model, "multi_modal_projector", None)
    if proj is not None and hasattr(proj, "mm_input_projection_weight"):  # Gemma 3 starts at zeros
        torch.nn.init.normal_(proj.mm_input_projection_weight, std=0.02)
    adapter = cls(model, tok, cls.default_preprocessing(config), f"bench:{family}", device=device)
    adapter.setup(tempfile.mkdtemp())  # no processor config: the family's defaults
    return adapter


def run(family: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    adapter = build(family, args.tiny, device, dtype)
    canvas = 64 if args.tiny else args.canvas
    prompts = ["What shape is this?"] * args.batch
    answers = ["a red circle"] * args.batch
    pixels = torch.rand(args.batch, 3, canvas, canvas, device=device, generator=torch.Generator(device).manual_seed(0))
    n_image = adapter.prompt_ids(prompts[0], (canvas, canvas)).count(int(adapter.model.config.image_token_id))
    times = []
    grad_ok = True
    for _ in range(args.steps + 1):
        x = pixels.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = adapter.lm_loss(x, prompts, answers)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        grad_ok &= bool(torch.isfinite(x.grad).all()) and bool(x.grad.abs().sum() > 0)
    step = sum(times[1:]) / len(times[1:])
    choices = ["circle", "a red square", "3"]
    few = pixels[:2]
    scores = adapter.score_choices(few, prompts[:2], choices)
    with torch.no_grad():
        brute = torch.tensor([[-adapter.lm_loss(few[b : b + 1], [prompts[b]], [c]).item() for c in choices]
                              for b in range(2)])
    text = adapter.generate(few, prompts[:2], max_new_tokens=4)
    return {
        "family": family, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "batch": args.batch, "canvas": canvas, "image_tokens": n_image,
        "params_M": round(sum(p.numel() for p in adapter.model.parameters()) / 1e6),
        "loss": round(loss.item(), 4), "grad_ok": grad_ok, "step_s": round(step, 4),
        "img_per_s": round(args.batch / step, 1),
        "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
        "score_vs_brute_max_abs": round((scores.float().cpu() - brute).abs().max().item(), 5),
        "generated": len(text) == 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["qwen2_vl", "qwen2_5_vl", "smolvlm", "paligemma", "gemma3"])
    parser.add_argument("--tiny", action="store_true", help="tiny test configs on CPU (checks the script)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--canvas", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    for family in args.families:
        try:
            print(json.dumps(run(family, args)), flush=True)
        except Exception as e:  # report and go on to the next family
            print(json.dumps({"family": family, "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
