"""Prompt-training step and choice-ranking throughput, with the plain HF step and a careless
baseline side by side.

    python -m benchmarks.prompt_step --family llava --size small --batch 8
    python -m benchmarks.prompt_step --family instructblip --size 7b --batch 8 16 32 --device cuda \
        --peak-tflops 790 --no-careless                                           # GPU

Measures, in one run, on one model built once and on the same device, for each ``--batch``:
- one prompt-training step (prompt.apply → forward → backward to the pixels → normalised update)
  for L_LLM alone, L_LLM + FCA and the full TVP objective (L_LLM + FCA + TSE), through the
  trainer's own :class:`~tvprompt.training.objective.Objective`; images/s, FLOPs per step
  (``FlopCounterMode``), ATen operators and device-to-host syncs per step, achieved FLOP/s, MFU
  against ``--peak-tflops``, peak memory;
- ``hf``: the plain transformers step of the design's anchors (``model(**inputs, labels=...)``,
  backward to the model's own preprocessed pixels);
- the same full TVP step done carelessly: weights requiring grad, eager attention, FCA from a
  second vision pass plus an uncached reference pass, TSE text re-encoded every step;
- with ``--compile MODE``: every step row again after regional ``torch.compile`` of the adapter's and
  the guide's transformer blocks (rows ``<terms> compiled``), the first call (compile time) apart
  from the steady state, and the eager/compiled time ratio. Measured last, so the eager rows and the
  ranking run on uncompiled models;
and then choice ranking: ``score_choices`` (shared prefix once, KV cache, all choices packed after
it) against the unpacked path (one copy of the prefix cache per choice, ``packed_choices = False``)
and one forward per (image, choice), for each ``--choices`` count.
``--narrow`` keeps the depth of ``--size`` with tiny widths (``shapes.narrow``): what is left is the
host's fixed cost per step. Absolute CPU times are noise on a loaded machine; the ratios measured in
one run are not, and operator counts are exact.
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
from torch.utils._python_dispatch import TorchDispatchMode
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


_SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero",
            "aten::equal", "aten::unique_consecutive", "aten::_unique2"}


def _bool_indices(args: tuple) -> bool:
    """Whether an ``aten::index``/``index_put`` call indexes with a boolean mask (a ``nonzero`` inside)."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _OpCounter(TorchDispatchMode):
    """Counts dispatched ATen operators, and those that make the host wait for the device: reading a
    value (``.item()``, ``if tensor``) or producing a data-dependent shape (``nonzero``, boolean indexing)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func._schema.name
        if name in _SYNCING or (name.startswith("aten::index") and _bool_indices(args)):
            self.syncs[name] = self.syncs.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> tuple[int, dict[str, int]]:
    """ATen operators one call dispatches, forward and backward (about one kernel launch each on a
    GPU), and the device-to-host synchronisations among them, by operator."""
    with _OpCounter() as counter:
        fn()
    return counter.ops, counter.syncs


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
    from tvprompt.prompt import VisualPrompt
    from tvprompt.training.augment import Augmentation
    from tvprompt.training.losses import fca_loss, total_loss, tse_loss
    from tvprompt.training.objective import FcaReferences, Objective, TaskTexts
    from tvprompt.training.updates import normalized_step

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

    step.prompt = prompt  # type: ignore[attr-defined]  # its gradient is checked after the timing
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


def make_hf_step(adapter: Any, batch: int):
    """The plain transformers step of the design's anchors: ``model(**inputs, labels=...)`` and a
    backward to the model's own pixel input (already resized and normalised: no prompt, no
    differentiable preprocessing, full logits). None for encoder-decoder language models, whose
    inputs the adapter builds differently."""
    from tvprompt.models.hf import pad_sequences

    if adapter.is_encoder_decoder:
        return None
    size = (224, 224)  # the prompted images' size, as in the trainer's step
    with torch.no_grad():
        pixels = adapter.preprocess(torch.rand(batch, 3, *size, device=adapter.device))
    pixels.requires_grad_(True)
    answer = adapter.answer_ids(ANSWER)
    ids, mask = pad_sequences([adapter.prompt_ids(INSTRUCTION, size) + answer] * batch, adapter.pad_id)
    text = adapter._finish_batch(ids, mask, size)
    text.prompts = [INSTRUCTION] * batch
    labels = text.input_ids.clone()
    labels[:, : -len(answer)] = -100

    def step() -> None:
        pixels.grad = None
        adapter._call(text, adapter.forward_kwargs(pixels, text), labels=labels, use_cache=False).loss.backward()

    return step


def measure_step(
    step, batch: int, device: torch.device, args: argparse.Namespace, peak: float | None
) -> dict[str, Any]:
    secs = timed(step, device, args.warmup, args.iters)
    flops = count_flops(step)
    row = {"seconds": secs, "images_per_s": batch / secs, "flops": flops, "flop_per_s": flops / secs,
           "peak_gib": peak_memory(step, device)}
    row["ops"], row["syncs"] = count_ops(step)
    if peak:
        row["mfu"] = flops / secs / peak
    return row


def build_careless(args: argparse.Namespace) -> tuple[Any, Any]:
    """The careless baseline's models: fp32 weights that require grad, eager attention."""
    slow = build_adapter(args.family, args.size, device=args.device, dtype=torch.float32, attn="eager",
                         narrowed=args.narrow)
    slow_guide = build_guide("tiny" if args.narrow else args.size, device=args.device, dtype=torch.float32)
    slow.model.requires_grad_(True)
    slow_guide.model.requires_grad_(True)
    return slow, slow_guide


def run_batch(adapter: Any, guide: Any, batch: int, args: argparse.Namespace,
              careless: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Every step row at one batch size: the trainer's step for each set of loss terms, the plain HF
    anchor step, and the careless step when its models are given."""
    device = torch.device(args.device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    images = torch.rand(batch, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(batch))
    out: dict[str, Any] = {"batch": batch, "steps": {}}
    steps = {terms: make_step(adapter, guide, images, terms) for terms in ("llm", "llm+fca", "llm+fca+tse")}
    hf = make_hf_step(adapter, batch)
    if hf is not None:
        steps["hf"] = hf
    for terms, step in steps.items():
        row = out["steps"][terms] = measure_step(step, batch, device, args, peak)
        print(f"batch {batch:>3} step {terms:<12} {row['images_per_s']:8.2f} img/s  {row['flops'] / 1e9:10.2f} GFLOP"
              + (f"  MFU {row['mfu']:.3f}" if peak else ""), file=sys.stderr)
    for terms in ("llm", "llm+fca+tse"):
        grad = steps[terms].prompt.delta.grad
        if not (torch.isfinite(grad).all() and grad.abs().sum() > 0):
            raise SystemExit(f"the {terms} step gave no finite, non-zero gradient on the prompt")
    base = out["steps"]["llm"]["seconds"]
    out["fca_tse_overhead"] = out["steps"]["llm+fca+tse"]["seconds"] / base - 1
    if careless is not None:
        step = make_step(*careless, images, "llm+fca+tse", careless=True)
        secs = timed(step, device, min(args.warmup, 1), max(1, args.iters // 2))
        out["careless_step"] = {"seconds": secs, "images_per_s": batch / secs, "peak_gib": peak_memory(step, device)}
        out["step_speedup_vs_careless"] = secs / out["steps"]["llm+fca+tse"]["seconds"]
        print(f"careless step     {batch / secs:8.2f} img/s  -> ours is "
              f"{out['step_speedup_vs_careless']:.1f}x faster", file=sys.stderr)
    return out


def run_ranking(adapter: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Packed KV-cached ranking against the unpacked path and one forward per (image, choice)."""
    device = torch.device(args.device)
    pixels = torch.rand(args.rank_batch, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(0))
    prompts, choices = [INSTRUCTION] * args.rank_batch, choice_names(n)

    def score() -> torch.Tensor:
        return adapter.score_choices(pixels, prompts, choices)

    cached = timed(score, device, 1, args.iters)
    adapter.packed_choices = False  # the unpacked path: one copy of the prefix cache per choice
    try:
        per_row = timed(score, device, 1, args.iters)
    finally:
        del adapter.packed_choices
    brute = timed(lambda: brute_force_scores(adapter, pixels, prompts, choices), device, 0, 1)
    diff = (score().float().cpu() - brute_force_scores(adapter, pixels, prompts, choices)).abs().max()
    row = {"kv_cached_s": cached, "per_row_s": per_row, "per_choice_s": brute, "speedup": brute / cached,
           "max_abs_diff": float(diff)}
    print(f"rank {n:>4} choices: cached {cached * 1e3:8.1f} ms (unpacked {per_row * 1e3:8.1f} ms), "
          f"per-choice {brute * 1e3:9.1f} ms -> {brute / cached:6.1f}x (max |diff| {diff:.2e})", file=sys.stderr)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    fast_dtype = torch.bfloat16 if (device.type == "cuda" and args.dtype == "auto") else (
        torch.float32 if args.dtype in ("auto", "float32") else getattr(torch, args.dtype))
    t0 = time.perf_counter()
    adapter = build_adapter(args.family, args.size, device=args.device, dtype=fast_dtype, narrowed=args.narrow)
    guide = build_guide("tiny" if args.narrow else args.size, device=args.device, dtype=fast_dtype)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "command": "python -m benchmarks.prompt_step " + " ".join(sys.argv[1:]),
        "family": args.family, "size": args.size + (" narrowed" if args.narrow else ""),
        "dtype": str(fast_dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in adapter.model.parameters()),
        "build_s": time.perf_counter() - t0,
    }
    careless = build_careless(args) if args.careless else None
    result["batches"] = [run_batch(adapter, guide, b, args, careless) for b in args.batch]
    del careless
    result["ranking"] = {str(n): run_ranking(adapter, n, args) for n in args.choices}
    if args.compile != "off":
        run_compiled(adapter, guide, result, args)
    return result


def run_compiled(adapter: Any, guide: Any, result: dict[str, Any], args: argparse.Namespace) -> None:
    """Compile the blocks of adapter and guide, then add a ``<terms> compiled`` row beside every eager
    step row of every batch: steady-state time, first-call time (compiling), eager/compiled ratio."""
    device = torch.device(args.device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    dynamic = {"true": True, "auto": None}[args.compile_dynamic]
    blocks = adapter.compile(args.compile, dynamic=dynamic) + guide.compile(args.compile, dynamic=dynamic)
    result["compile"] = {"mode": args.compile, "dynamic": args.compile_dynamic, "blocks": blocks}
    for b in result["batches"]:
        batch = b["batch"]
        images = torch.rand(batch, 3, 224, 224, device=device, generator=torch.Generator(device).manual_seed(batch))
        steps = {terms: make_step(adapter, guide, images, terms) for terms in ("llm", "llm+fca", "llm+fca+tse")}
        if "hf" in b["steps"]:
            steps["hf"] = make_hf_step(adapter, batch)
        b["compile_s"] = 0.0
        for terms, step in steps.items():
            eager = b["steps"][terms]
            _sync(device)
            t0 = time.perf_counter()
            step()  # compiles what this row adds: grad graphs, the no-grad FCA reference pass, the guide
            _sync(device)
            first = time.perf_counter() - t0
            secs = timed(step, device, args.warmup, args.iters)
            row = {"seconds": secs, "images_per_s": batch / secs, "flops": eager["flops"],
                   "flop_per_s": eager["flops"] / secs, "peak_gib": peak_memory(step, device), "first_call_s": first,
                   "compile_s": max(first - secs, 0.0), "speedup_vs_eager": eager["seconds"] / secs}
            if peak:
                row["mfu"] = eager["flops"] / secs / peak
            b["steps"][f"{terms} compiled"] = row
            b["compile_s"] += row["compile_s"]
            print(f"batch {batch:>3} step {terms + ' compiled':<21} {row['images_per_s']:8.2f} img/s  first call "
                  f"{first:7.1f} s  {row['speedup_vs_eager']:.2f}x eager", file=sys.stderr)
        for terms in ("llm", "llm+fca+tse"):
            grad = steps[terms].prompt.delta.grad
            if not (torch.isfinite(grad).all() and grad.abs().sum() > 0):
                raise SystemExit(f"the compiled {terms} step gave no finite, non-zero gradient on the prompt")


def markdown(result: dict[str, Any]) -> str:
    batches = ", ".join(str(b["batch"]) for b in result["batches"])
    lines = [f"**{result['family']} {result['size']}** ({result['parameters'] / 1e9:.2f} B parameters), "
             f"batch {batches}, {result['dtype']}, {result['device']}, torch {result['torch']}, "
             f"transformers {result['transformers']}, {result['date']}: `{result['command']}`", "",
             "| batch | step | img/s | ms/step | GFLOP/step | ATen ops/step | host syncs/step | MFU | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for b in result["batches"]:
        rows = dict(b["steps"])
        if "careless_step" in b:
            rows["careless llm+fca+tse"] = b["careless_step"]
        for terms, row in rows.items():
            mfu = f"{row['mfu']:.3f}" if "mfu" in row else "-"
            mem = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
            flops = f"{row['flops'] / 1e9:.2f}" if "flops" in row else "-"
            ops = f"{row['ops']}" if "ops" in row else "-"
            syncs = f"{sum(row['syncs'].values())}" if "syncs" in row else "-"
            lines.append(f"| {b['batch']} | {terms} | {row['images_per_s']:.2f} | {row['seconds'] * 1e3:.1f} | "
                         f"{flops} | {ops} | {syncs} | {mfu} | {mem} |")
        note = f"batch {b['batch']}: FCA+TSE overhead over L_LLM alone {b['fca_tse_overhead'] * 100:+.1f} %"
        if "hf" in b["steps"]:
            ratio = b['steps']['hf']['images_per_s'] / b['steps']['llm+fca+tse']['images_per_s']
            note += f"; TVP step / plain HF step time {ratio:.2f}"
        if "step_speedup_vs_careless" in b:
            note += f"; TVP step vs careless loop {b['step_speedup_vs_careless']:.1f}x"
        if "compile_s" in b:
            ratios = ", ".join(f"{t} {b['steps'][t + ' compiled']['speedup_vs_eager']:.2f}x"
                               for t in b["steps"] if t + " compiled" in b["steps"])
            note += f"; eager/compiled step time {ratios}; compiling {b['compile_s']:.1f} s (first calls)"
        notes.append(note)
    lines += [""] + [f"- {n}" for n in notes]
    lines.append("- `hf` = the plain transformers forward + backward to the model's own (preprocessed) pixel input: "
                 "the design's anchor recipe")
    if "compile" in result:
        c = result["compile"]
        lines.append(f"- `compiled` = after regional torch.compile ({c['mode']}, dynamic {c['dynamic']}) of "
                     f"{c['blocks']} transformer blocks of the model and the guide")
    if result["ranking"]:
        lines += ["", "| choices | packed ms | unpacked ms | per-choice ms | speed-up | max abs diff |",
                  "|---|---|---|---|---|---|"]
        for n, r in result["ranking"].items():
            lines.append(f"| {n} | {r['kv_cached_s'] * 1e3:.1f} | {r['per_row_s'] * 1e3:.1f} | "
                         f"{r['per_choice_s'] * 1e3:.1f} | {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prompt_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="llava")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--batch", type=int, nargs="+", default=[8],
                   help="one or more batch sizes (the model is built once)")
    p.add_argument("--rank-batch", type=int, default=2, help="images for the ranking benchmark")
    p.add_argument("--choices", type=int, nargs="*", default=[10, 100])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s (TFLOP/s) for MFU")
    p.add_argument("--narrow", action="store_true",
                   help="the --size depth with tiny widths: measures the host's fixed cost per step (see "
                        "shapes.narrow)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-careless", dest="careless", action="store_false", help="skip the careless baseline")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default="off",
                   help="also measure every step after regional torch.compile in this mode (rows '<terms> compiled')")
    p.add_argument("--compile-dynamic", choices=["true", "auto"], default="true",
                   help="dynamic shapes of the compiled blocks: true (symbolic from the start) | auto (torch's "
                        "default)")
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
