"""Prompt-training step and choice-ranking throughput, with a careless baseline side by side.

    python -m benchmarks.prompt_step --family llava --size small --batch 8
    python -m benchmarks.prompt_step --size 7b --batch 32 --device cuda --peak-tflops 790   # GPU

Measures, in one run and on the same device:
- one prompt-training step (prompt.apply → forward → backward to the pixels → normalised update)
  for L_LLM alone, L_LLM + FCA and the full TVP objective (L_LLM + FCA + TSE), through the
  trainer's own :class:`~tvprompt.objective.Objective`; images/s, FLOPs per step
  (``FlopCounterMode``), achieved FLOP/s, MFU against ``--peak-tflops``, peak memory;
- the same full TVP step done carelessly: weights requiring grad, eager attention, FCA from a
  second vision pass plus an uncached reference pass, TSE text re-encoded every step;
- choice ranking: ``score_choices`` (shared prefix once, KV cache, all choices packed after it)
  against the unpacked path (one copy of the prefix cache per choice, ``packed_choices = False``)
  and one forward per (image, choice), for each ``--choices`` count;
- with ``--compile MODE``: the three step rows again after regional ``torch.compile`` of the adapter's
  and the guide's transformer blocks (rows ``<terms> compiled``), their first call (compile time)
  apart from the steady state, and the eager/compiled time ratio. Measured last, so the eager rows
  and the ranking above run on uncompiled models.
Absolute CPU times are noise on a loaded machine; the ratios measured in one run are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .shapes import SIZES, build_adapter, build_guide

INSTRUCTION = "What shape is this?"
ANSWER = "a red circle"


@dataclass
class _Sample:
    id: str


class _Spec:
    """The few task hooks the objective needs: one instruction, one answer, one TSE text."""

    def prompt_for(self, sample: Any, family: str | None = None) -> str:
        return INSTRUCTION

    def answer_for(self, sample: Any) -> str:
        return ANSWER

    def tse_text_for(self, sample: Any) -> str:
        return f"a photo of {ANSWER}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_memory(fn, device: torch.device) -> float | None:
    """Peak accelerator memory in GiB of one call (None on CPU, where it is not tracked)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def make_step(adapter: Any, guide: Any, images: torch.Tensor, terms: str, *, careless: bool = False):
    """A closure doing one full prompt-training step for the given loss terms."""
    from tvprompt.augment import Augmentation
    from tvprompt.losses import fca_loss, total_loss, tse_loss
    from tvprompt.objective import FcaReferences, Objective, TaskTexts
    from tvprompt.prompt import VisualPrompt
    from tvprompt.train import normalized_step

    prompt = VisualPrompt().to(images.device)
    samples = [_Sample(str(i)) for i in range(images.shape[0])]
    aug = Augmentation(flipped=torch.zeros(images.shape[0], dtype=torch.bool), deterministic=True)
    fca_w = 0.005 if "fca" in terms else 0.0
    tse_w = 0.001 if "tse" in terms else 0.0
    spec = _Spec()

    if careless:
        blank = VisualPrompt().to(images.device)

        def loss_fn() -> torch.Tensor:
            prompted = prompt.apply(images)
            llm = adapter.lm_loss(prompted, [INSTRUCTION] * len(samples), [ANSWER] * len(samples))
            fca = tse = None
            if fca_w:
                feats = adapter.vision_features(prompted)  # a second vision pass, with grad
                with torch.no_grad():
                    ref = adapter.vision_features(blank.apply(images))  # recomputed every step
                fca = fca_loss(feats, ref)
            if tse_w:
                txt = guide.encode_text([spec.tse_text_for(s) for s in samples])  # re-encoded every step
                tse = tse_loss(guide.encode_image(prompted), txt, guide.logit_scale)
            return total_loss(llm, fca, tse, fca_w, tse_w)
    else:
        refs = [FcaReferences(adapter, prompt, "encoder", "shrunk", cache_mb=1024)] if fca_w else None
        texts = TaskTexts(guide, [spec.tse_text_for(s) for s in samples]) if tse_w else None
        objective = Objective([adapter], spec, fca_w, tse_w, references=refs, guide=guide if tse_w else None,
                              texts=texts)

        def loss_fn() -> torch.Tensor:
            return objective(prompt, images, samples, aug)[0]

    def step() -> None:
        prompt.delta.grad = None
        loss_fn().backward()
        with torch.no_grad():
            prompt.delta.copy_(normalized_step(prompt.delta, prompt.delta.grad, prompt.mask, 1.0))
        prompt.project_()

    return step


def brute_force_scores(adapter: Any, pixels: torch.Tensor, prompts: list[str], choices: list[str]) -> torch.Tensor:
    """One full forward per (image, choice): the careless way to rank choices."""
    out = torch.empty(len(prompts), len(choices))
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            for j, choice in enumerate(choices):
                out[i, j] = -adapter.lm_loss(pixels[i : i + 1], [prompt], [choice]).float()
    return out


def choice_names(n: int) -> list[str]:
    words = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "cyan", "gray"]
    shapes = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring", "hexagon", "ellipse"]
    return [f"{words[i % 10]} {shapes[(i // 10) % 10]}" + (f" {i // 100}" if i >= 100 else "") for i in range(n)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    fast_dtype = torch.bfloat16 if (device.type == "cuda" and args.dtype == "auto") else (
        torch.float32 if args.dtype in ("auto", "float32") else getattr(torch, args.dtype))
    torch.manual_seed(0)
    adapter = build_adapter(args.family, args.size, device=args.device, dtype=fast_dtype, attn="sdpa")
    guide = build_guide(args.size, device=args.device, dtype=fast_dtype)
    images = torch.rand(args.batch, 3, 224, 224, device=device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": "python -m benchmarks.prompt_step " + " ".join(sys.argv[1:]),
        "family": args.family, "size": args.size, "batch": args.batch, "dtype": str(fast_dtype).removeprefix("torch."),
        "steps": {}, "ranking": {},
    }
    for terms in ("llm", "llm+fca", "llm+fca+tse"):
        step = make_step(adapter, guide, images, terms)
        secs = timed(step, device, args.warmup, args.iters)
        flops = count_flops(step)
        row = {"seconds": secs, "images_per_s": args.batch / secs, "flops": flops, "flop_per_s": flops / secs,
               "peak_gib": peak_memory(step, device)}
        if peak:
            row["mfu"] = flops / secs / peak
        result["steps"][terms] = row
        print(f"step {terms:<12} {row['images_per_s']:8.2f} img/s  {flops / 1e9:10.2f} GFLOP"
              + (f"  MFU {row['mfu']:.3f}" if peak else ""), file=sys.stderr)
    base = result["steps"]["llm"]["seconds"]
    result["fca_tse_overhead"] = result["steps"]["llm+fca+tse"]["seconds"] / base - 1

    if args.careless:
        slow = build_adapter(args.family, args.size, device=args.device, dtype=torch.float32, attn="eager")
        slow.model.requires_grad_(True)
        slow_guide = build_guide(args.size, device=args.device, dtype=torch.float32)
        slow_guide_model = getattr(slow_guide, "model", None)
        if slow_guide_model is not None:
            slow_guide_model.requires_grad_(True)
        step = make_step(slow, slow_guide, images, "llm+fca+tse", careless=True)
        secs = timed(step, device, min(args.warmup, 1), max(1, args.iters // 2))
        result["careless_step"] = {"seconds": secs, "images_per_s": args.batch / secs,
                                   "peak_gib": peak_memory(step, device)}
        result["step_speedup_vs_careless"] = secs / result["steps"]["llm+fca+tse"]["seconds"]
        print(f"careless step     {args.batch / secs:8.2f} img/s  -> ours is "
              f"{result['step_speedup_vs_careless']:.1f}x faster", file=sys.stderr)
        del slow, slow_guide

    prompts = [INSTRUCTION] * args.rank_batch
    pixels = images[: args.rank_batch]
    for n in args.choices:
        choices = choice_names(n)
        cached = timed(lambda c=choices: adapter.score_choices(pixels, prompts, c), device, 1, args.iters)
        adapter.packed_choices = False  # the unpacked path: one copy of the prefix cache per choice
        try:
            per_row = timed(lambda c=choices: adapter.score_choices(pixels, prompts, c), device, 1, args.iters)
        finally:
            del adapter.packed_choices
        brute = timed(lambda c=choices: brute_force_scores(adapter, pixels, prompts, c), device, 0, 1)
        a = adapter.score_choices(pixels, prompts, choices).float().cpu()
        b = brute_force_scores(adapter, pixels, prompts, choices)
        result["ranking"][str(n)] = {"kv_cached_s": cached, "per_row_s": per_row, "per_choice_s": brute,
                                     "speedup": brute / cached, "max_abs_diff": float((a - b).abs().max())}
        print(f"rank {n:>4} choices: cached {cached * 1e3:8.1f} ms (unpacked {per_row * 1e3:8.1f} ms), "
              f"per-choice {brute * 1e3:9.1f} ms -> {brute / cached:6.1f}x "
              f"(max |diff| {result['ranking'][str(n)]['max_abs_diff']:.2e})", file=sys.stderr)
    if args.compile and args.compile != "off":
        compiled_rows(adapter, guide, images, args, result)
    return result


def compiled_rows(adapter: Any, guide: Any, images: torch.Tensor, args: argparse.Namespace,
                  result: dict[str, Any]) -> None:
    """Add ``<terms> compiled`` rows: the same steps after regional compilation of adapter and guide."""
    device = images.device
    dynamic = {"true": True, "auto": None}[args.compile_dynamic]
    blocks = adapter.compile(args.compile, dynamic=dynamic) + guide.compile(args.compile, dynamic=dynamic)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    compile_total = 0.0
    for terms in ("llm", "llm+fca", "llm+fca+tse"):
        eager_row = result["steps"][terms]
        step = make_step(adapter, guide, images, terms)
        _sync(device)
        t0 = time.perf_counter()
        step()  # compiles whatever this row adds (grad graphs, the no-grad FCA reference, the guide)
        _sync(device)
        first = time.perf_counter() - t0
        secs = timed(step, device, args.warmup, args.iters)
        compile_total += max(first - secs, 0.0)
        row = {"seconds": secs, "images_per_s": args.batch / secs, "flops": eager_row["flops"],
               "flop_per_s": eager_row["flops"] / secs, "peak_gib": peak_memory(step, device),
               "first_call_s": first, "compile_s": max(first - secs, 0.0),
               "speedup_vs_eager": eager_row["seconds"] / secs}
        if peak:
            row["mfu"] = eager_row["flops"] / secs / peak
        result["steps"][f"{terms} compiled"] = row
        print(f"step {terms + ' compiled':<21} {row['images_per_s']:8.2f} img/s  first call {first:7.1f} s  "
              f"{row['speedup_vs_eager']:.2f}x eager", file=sys.stderr)
    result["compile"] = {"mode": args.compile, "dynamic": args.compile_dynamic, "blocks": blocks,
                         "compile_s": compile_total,
                         "fca_tse_overhead": result["steps"]["llm+fca+tse compiled"]["seconds"]
                         / result["steps"]["llm compiled"]["seconds"] - 1}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"**{result['family']} {result['size']}**, batch {result['batch']}, {result['dtype']}, "
             f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}, "
             f"{result['date']}: `{result['command']}`", "",
             "| step | img/s | GFLOP/step | MFU | peak GiB |", "|---|---|---|---|---|"]
    for terms, row in result["steps"].items():
        mfu = f"{row['mfu']:.3f}" if "mfu" in row else "-"
        mem = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
        lines.append(f"| {terms} | {row['images_per_s']:.2f} | {row['flops'] / 1e9:.2f} | {mfu} | {mem} |")
    if "careless_step" in result:
        c = result["careless_step"]
        lines.append(f"| careless llm+fca+tse | {c['images_per_s']:.2f} | - | - | "
                     f"{c['peak_gib']:.1f} |" if c["peak_gib"] is not None else
                     f"| careless llm+fca+tse | {c['images_per_s']:.2f} | - | - | - |")
    lines += ["", f"FCA+TSE overhead over L_LLM alone: {result['fca_tse_overhead'] * 100:+.1f} %"]
    if "step_speedup_vs_careless" in result:
        lines.append(f"TVP step vs careless loop: {result['step_speedup_vs_careless']:.1f}x")
    if "compile" in result:
        c, steps = result["compile"], result["steps"]
        ratios = ", ".join(f"{t} {steps[t + ' compiled']['speedup_vs_eager']:.2f}x" for t in ("llm", "llm+fca", "llm+fca+tse"))
        lines.append(f"torch.compile ({c['mode']}, dynamic {c['dynamic']}, {c['blocks']} blocks): eager/compiled step "
                     f"time {ratios}; compile time {c['compile_s']:.1f} s (first calls); compiled FCA+TSE overhead "
                     f"{c['fca_tse_overhead'] * 100:+.1f} %")
    if result["ranking"]:
        lines += ["", "| choices | KV-cached ms | unpacked ms | per-choice ms | speed-up | max abs diff |",
                  "|---|---|---|---|---|---|"]
        for n, r in result["ranking"].items():
            lines.append(f"| {n} | {r['kv_cached_s'] * 1e3:.1f} | {r['per_row_s'] * 1e3:.1f} | "
                         f"{r['per_choice_s'] * 1e3:.1f} | {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prompt_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="llava")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank-batch", type=int, default=2, help="images for the ranking benchmark")
    p.add_argument("--choices", type=int, nargs="*", default=[10, 100])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s (TFLOP/s) for MFU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-careless", dest="careless", action="store_false", help="skip the careless baseline")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default="off",
                   help="also measure the steps after regional torch.compile in this mode (rows '<terms> compiled')")
    p.add_argument("--compile-dynamic", choices=["true", "auto"], default="true",
                   help="dynamic shapes of the compiled blocks: true (symbolic from the start) | auto (torch's default)")
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    p.add_argument("--markdown", type=Path, help="append a Markdown block here (e.g. benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write("\n" + md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
