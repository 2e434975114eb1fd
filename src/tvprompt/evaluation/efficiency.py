"""Tab. 5: what one training step costs for a visual prompt vs full fine-tuning vs LoRA, on the same model.

For each method a fresh adapter is loaded (full fine-tuning and LoRA change the weights), one real
batch is taken from the task's training split, and ``steps`` timed updates follow ``warmup`` untimed
ones. Reported per method: trainable parameters, median step time, and peak memory — on a GPU
CUDA's ``max_memory_allocated`` over the timed steps (weights, optimiser state and activations),
on CPU only the peak resident-set growth over the timed steps, sampled every few ms (a rough
approximation that leaves out the weights; compare methods with it, not devices). A method that runs out of memory or
needs a missing package is reported with its reason instead of numbers. LoRA uses peft
(``pip install 'tvprompt[lora]'``) on the adapter's ``model``.
"""

from __future__ import annotations

import gc
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import UsageError
from .evaluate import Backends

log = logging.getLogger(__name__)

METHODS = ("prompt", "lora", "full")


class _PeakRSS:
    """Samples the process RSS in a thread; ``peak_mib`` is the largest growth over the start value."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def lora_targets(model: torch.nn.Module) -> list[str]:
    """Module names for LoRA: the attention q/v projections (the usual choice) of the language model
    when the model has one, else every q/v projection, else every Linear."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    qv = [n for n in linear if n.rsplit(".", 1)[-1] in ("q_proj", "v_proj")]
    in_lm = [n for n in qv if "language_model" in n.split(".")]
    return in_lm or qv or linear


def _setup_method(method: str, adapter: Any, image_size: int, width: int, lora_rank: int):
    """(trainable parameters, step function taking (images, prompts, answers))."""
    if method == "prompt":
        from ..prompt import VisualPrompt

        prompt = VisualPrompt(image_height=image_size, image_width=image_size, prompt_width=width).to(adapter.device)

        def step(images, prompts, answers):
            loss = adapter.lm_loss(prompt.apply(images), prompts, answers)
            (grad,) = torch.autograd.grad(loss, prompt.delta)
            with torch.no_grad():
                g = grad * prompt.mask
                prompt.delta.sub_(g / g.norm().clamp_min(1e-12))
                prompt.project_()
            return loss

        return prompt.num_parameters, step
    model = getattr(adapter, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise _Skip(f"adapter {type(adapter).__name__} exposes no `model` to fine-tune")
    if method == "lora":
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise _Skip("peft is not installed (pip install 'tvprompt[lora]')") from None
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=lora_targets(model)),
                                model)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
    else:
        params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step(images, prompts, answers):
        loss = adapter.lm_loss(images, prompts, answers)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return sum(p.numel() for p in params), step


class _Skip(Exception):
    pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_id: str, task: str, data: str, *, methods: Sequence[str] = METHODS, batch_size: int = 8,
            steps: int = 5, warmup: int = 1, image_size: int = 224, width: int = 30, lora_rank: int = 8,
            seed: int = 0, split: str = "train", backends: Backends | None = None,
            load_adapter: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """One row per method: trainable/total parameters, median step ms, peak memory MiB (or why it was skipped)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UsageError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if steps < 1:
        raise UsageError(f"--steps: {steps} must be >= 1")
    backends = backends or Backends.default()
    load = load_adapter or backends.load_adapter
    spec = backends.load_task(task)
    dataset = backends.open_dataset(spec, data, split, seed=seed)
    batch = next(iter(backends.iter_batches(dataset, batch_size, shuffle=False, seed=seed, image_size=image_size)))
    rows = []
    for method in methods:
        adapter = load(model_id)
        total = sum(p.numel() for p in adapter.model.parameters()) if hasattr(adapter, "model") else None
        family = getattr(adapter, "family", "")
        prompts = [spec.prompt_for(s, family) for s in batch.samples]
        answers = [spec.answer_for(s) for s in batch.samples]
        images = batch.images.to(adapter.device).float()
        row: dict[str, Any] = {"method": method, "model": model_id, "batch_size": len(batch.samples),
                               "total_params": total, "device": str(adapter.device)}
        try:
            trainable, step = _setup_method(method, adapter, image_size, width, lora_rank)
            row["trainable_params"] = trainable
            for _ in range(warmup):
                step(images, prompts, answers)
            _sync(adapter.device)
            cuda = adapter.device.type == "cuda"
            if cuda:  # weights, optimiser state (made in the warm-up) and the step's activations
                torch.cuda.reset_peak_memory_stats(adapter.device)
            times = []
            with _PeakRSS() as rss:
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step(images, prompts, answers)
                    _sync(adapter.device)
                    times.append(time.perf_counter() - t0)
            row["step_ms"] = 1000 * statistics.median(times)
            row["peak_mem_mib"] = torch.cuda.max_memory_allocated(adapter.device) / 2**20 if cuda else rss.peak_mib
            row["memory"] = "cuda max_memory_allocated (weights included)" if cuda else "process RSS growth (sampled)"
            row["status"] = "ok"
        except _Skip as e:
            row["status"] = f"skipped: {e}"
        except torch.OutOfMemoryError:
            row["status"] = "does not fit: out of memory"
        log.info("efficiency %s: %s", method, row)
        del adapter
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def efficiency(model_id: str, task: str, data: str, output: Any, *, reduced: bool = False, **kw: Any) -> dict[str, Any]:
    """Run :func:`measure` and write efficiency.json / .md / .png (step time and memory per method)."""
    from pathlib import Path

    from .analyses import write_analysis
    from .report import bar_chart

    if reduced:
        kw.setdefault("steps", 2)
        kw.setdefault("batch_size", 2)
    rows = measure(model_id, task, data, **kw)
    ok = [r for r in rows if r["status"] == "ok"]
    prompt_ms = next((r["step_ms"] for r in ok if r["method"] == "prompt"), None)

    def fmt(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    table = [[r["method"], fmt(r.get("trainable_params"), ","), fmt(r.get("step_ms"), ".1f"),
              fmt(r["step_ms"] / prompt_ms if prompt_ms and r.get("step_ms") else None, ".2f"),
              fmt(r.get("peak_mem_mib"), ".1f"), r["status"]] for r in rows]

    skipped = [f"{r['method']} ({r['status']})" for r in rows if r["status"] != "ok"]
    caveat = ("Timings of tiny models on a CPU show the code paths, not the GPU picture: "
              "measure on your GPU with your model for real costs.") if rows[0]["device"] == "cpu" else ""

    def plot(path: Path) -> Path:
        note = "\n".join(([f"not shown: {', '.join(skipped)}"] if skipped else []) + ([caveat] if caveat else []))
        return bar_chart([r["method"] for r in ok], {"step time (ms)": [r["step_ms"] for r in ok]}, path,
                         title=f"training step cost on {model_id}", ylabel="ms per step", note=note)

    doc = {"title": "training efficiency", "model": model_id, "task": task, "reduced": reduced, "rows": rows}
    return write_analysis(Path(output), "efficiency", doc,
                          ["method", "trainable params", "step ms", "× prompt", "peak MiB", "status"], table, plot,
                          f"One training step, batch {rows[0]['batch_size']}, median over the timed steps, "
                          f"device {rows[0]['device']}."
                          + (f" Not in the plot: {', '.join(skipped)}." if skipped else "")
                          + (f" {caveat}" if caveat else ""))
