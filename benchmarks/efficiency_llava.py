"""Tab. 5 on a GPU: prompt training vs LoRA vs full fine-tuning on a LLaVA-1.5-shaped model.

Builds a random-init LLaVA checkpoint (``benchmarks.shapes``: ``--size 1b`` = CLIP ViT-L/14-336 + a
1B Llama, ``7b`` = LLaVA-1.5-7B, ``tiny`` = a CPU smoke run) — random weights cost the same compute
as trained ones — then runs `tvprompt.evaluation.efficiency.efficiency` on it.

    python -m benchmarks.efficiency_llava --out runs/eff --size 1b --batch-size 8 --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(directory: Path, size: str) -> str:
    """Save a random-init LLaVA checkpoint of ``size`` (see ``shapes.CONFIGS``) and return its model id."""
    from tvprompt.files import atomic_dir

    from .shapes import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok, pre, _ = build_model("llava", size, device=device, dtype=torch.bfloat16)
    processor = {"image_processor_type": "CLIPImageProcessor", **pre.to_processor_config()}
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built {directory} ({n / 1e9:.2f} B parameters)", flush=True)
    return f"hf:{directory}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=["tiny", "1b", "7b"], default="1b",
                   help="1b: CLIP ViT-L/14-336 + a 1B Llama; 7b: LLaVA-1.5-7B; tiny: a CPU smoke run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=["prompt", "lora", "full"])
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _data_fixtures import write_cifar10
    from tvprompt.evaluation.efficiency import efficiency

    work = Path(tempfile.mkdtemp())
    write_cifar10(work / "data", per_batch=32)
    t0 = time.time()
    model = build(work / "model", args.size)
    print(f"build {time.time() - t0:.0f}s", flush=True)
    doc = efficiency(model, "cifar10", str(work / "data"), args.out, methods=args.methods, steps=args.steps,
                     batch_size=args.batch_size, image_size=336 if args.size != "tiny" else 64,
                     width=30 if args.size != "tiny" else 8)
    print((Path(args.out) / "efficiency.md").read_text())
    print(json.dumps(doc["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
