"""Tab. 5 on a GPU: prompt training vs LoRA vs full fine-tuning on a LLaVA-1.5-shaped model.

Builds a random-init LLaVA checkpoint (CLIP ViT-L/14-336 vision tower; the language model's size
is set by --lm: "1b" = Llama hidden 2048 × 16 layers, "7b" = Llama-2-7B) — random weights cost the
same compute as trained ones — then runs `tvprompt.efficiency.efficiency` on it.

    python benchmarks/efficiency_llava.py --out runs/eff --lm 1b --batch-size 8 --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(directory: Path, lm: str) -> str:
    import transformers

    from tvprompt.files import atomic_dir
    from tvprompt.models.llava import tiny_llava
    from tvprompt.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("llava")
    spec = tiny_llava(tok, image_size=336, patch_size=14, hidden=1024)
    v, t = spec.config.vision_config, spec.config.text_config
    if lm != "tiny":  # "tiny": a smoke test of this script on a CPU
        v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 4096, 24, 16
    dims = {"tiny": (64, 128, 2, 2), "1b": (2048, 5504, 16, 16), "7b": (4096, 11008, 32, 32)}[lm]
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads = dims
    t.num_key_value_heads = dims[3]
    t.max_position_embeddings = 2048
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = getattr(transformers, spec.model_class)(spec.config).to(torch.bfloat16).eval()
    processor = {"image_processor_type": spec.image_processor_type, **spec.preprocessing.to_processor_config()}
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
    p.add_argument("--lm", choices=["tiny", "1b", "7b"], default="1b")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=["prompt", "lora", "full"])
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _data_fixtures import write_cifar10
    from tvprompt.efficiency import efficiency

    work = Path(tempfile.mkdtemp())
    write_cifar10(work / "data", per_batch=32)
    t0 = time.time()
    model = build(work / "model", args.lm)
    print(f"build {time.time() - t0:.0f}s", flush=True)
    doc = efficiency(model, "cifar10", str(work / "data"), args.out, methods=args.methods, steps=args.steps,
                     batch_size=args.batch_size, image_size=336, width=30)
    print((Path(args.out) / "efficiency.md").read_text())
    print(json.dumps(doc["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
