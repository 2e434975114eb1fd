"""Demo prompts for ``tvp serve --demo``: a few small ShapeWorld prompts, built once, cached in the store.

At the first start the demo writes a small ShapeWorld downstream set, trains each prompt of
:data:`DEMO_PROMPTS` for a few updates on the zoo's LLaVA with the library's own ``train``
(fixed seeds, float32: the same bytes on every run), evaluates it with ``evaluate`` on every
hosted model (the transfer table of its page), and registers it for the owner ``demo``. A
prompt already in the registry is not built again, so a restart only loads the models.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import Registry

log = logging.getLogger(__name__)
OWNER = "demo"
SOURCE = "zoo:llava-p8"
GUIDE = "zoo:clip-guide"


@dataclass(frozen=True)
class DemoPrompt:
    name: str
    task: str  # a ShapeWorld task: shape | color | count | exist
    method: str


DEMO_PROMPTS = (DemoPrompt("shapes-tvp", "shape", "tvp"), DemoPrompt("shapes-vp", "shape", "vp"),
                DemoPrompt("colors-tvp", "color", "tvp"))
N_IMAGES = 160  # split 60/20/20 into train/val/test
STEPS = 20
BATCH = 16
WIDTH = 8
IMAGE_SIZE = 64


def demo_models() -> list[str]:
    """The zoo MLLMs a demo server hosts."""
    from ..zoo.catalog import mllm_names

    return [f"zoo:{n}" for n in mllm_names()]


def missing(registry: Registry) -> list[DemoPrompt]:
    have = {row.name for row in registry.search(owner=OWNER, limit=1000)}
    return [p for p in DEMO_PROMPTS if p.name not in have]


def ensure_demo_prompts(registry: Registry, adapters: list[Any]) -> list[str]:
    """Build and register the demo prompts the registry lacks (transfer measured on ``adapters``);
    returns their names."""
    todo = missing(registry)
    if not todo:
        return []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tvp-demo-") as tmp:
        for prompt_dir, spec in zip(build_prompts(todo, Path(tmp), adapters), todo, strict=True):
            registry.add_dir(prompt_dir, OWNER, spec.name)
    log.info("demo: built %s in %.1f s", ", ".join(p.name for p in todo), time.monotonic() - t0)
    return [p.name for p in todo]


def build_prompts(specs: list[DemoPrompt], work: Path, adapters: list[Any]) -> list[Path]:
    """Train the demo prompts, add their transfer table on ``adapters`` and an example question.

    Returns the prompt directories. Already loaded models are reused: the source model when it
    is among ``adapters``, and every model of the transfer table (one ``evaluate`` per task).
    """
    from ..data.shapeworld import QUESTIONS, write_dataset
    from ..evaluation.evaluate import Backends, EvalSetup, evaluate
    from ..models.registry import load_adapter, load_guide
    from ..prompt import VisualPrompt
    from ..training.loop import resolve_config, train

    loaded = {a.model_id: a for a in adapters}
    source = loaded.get(SOURCE) or load_adapter(SOURCE, device="cpu", dtype="float32")
    guide = load_guide(GUIDE, device=source.device, dtype="float32") if any(s.method == "tvp" for s in specs) else None
    trained: dict[str, Path] = {}
    for spec in specs:
        data = work / f"data-{spec.task}"
        if not (data / "manifest.jsonl").is_file():
            write_dataset(spec.task, N_IMAGES, data, distribution="downstream", seed=0, split_mix=True, overwrite=True)
        flags: dict[str, Any] = {"sources": [SOURCE], "task": f"shapeworld_{spec.task}", "data": str(data),
                                 "output": str(work / "runs" / spec.name), "steps": STEPS, "batch_size": BATCH,
                                 "seed": 0,
                                 "width": WIDTH, "image_size": IMAGE_SIZE, "val_split": "val", "ckpt_every": 0,
                                 "progress": False, "dtype": "float32", "num_workers": 0}
        if spec.method == "tvp":
            flags["guide"] = GUIDE
        config = resolve_config(spec.method, flags=flags)
        result = train(config, sources=[source], guide=guide if spec.method == "tvp" else None)
        trained[spec.name] = Path(result.output or work / "runs" / spec.name) / "prompt"
    backends = dataclasses.replace(Backends.default(), load_adapter=lambda model_id: loaded[model_id])
    out: dict[str, Path] = {}
    for task in sorted({s.task for s in specs}):
        group = [s for s in specs if s.task == task]
        setup = EvalSetup(task=f"shapeworld_{task}", data=str(work / f"data-{task}"), split="test")
        results = evaluate([str(trained[s.name]) for s in group], list(loaded), setup, work / "eval" / task,
                           names=[s.name for s in group], command="tvp serve --demo",
                           backends=backends) if loaded else None
        for spec in group:
            prompt = VisualPrompt.from_pretrained(trained[spec.name])
            if results is not None:
                prompt.config.metrics["transfer"] = transfer_table(results, spec.name)
            prompt.config.templates["example_question"] = QUESTIONS[task]
            out[spec.name] = prompt.save_pretrained(work / "final" / spec.name)
    return [out[s.name] for s in specs]


def transfer_table(results: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """Per model: the primary metric without and with prompt ``name``, from ``evaluate``'s results."""
    primary = results["primary_metric"]
    n = {c["model"]: c["n"] for c in results["cells"] if c["prompt"] is None}
    return {model: {"clean": row["clean"].get(primary), "prompted": row["prompted"].get(primary), "metric": primary,
                    "n": n.get(model), "source": row["source"]}
            for model, row in results["transfer"][name].items()}
