"""`tvp train`: learn a visual prompt with VP, EVP or TVP on one or several source models.

    tvp train --method tvp --source hf:llava-hf/llava-1.5-7b-hf --task cifar10 --data ~/data/cifar10 \\
        --guide hf:openai/clip-vit-base-patch32 --output runs/tvp-cifar10 --steps 2000

Options combine as: the method's preset, then ``--config FILE.yaml``, then flags (flags win).
``accelerate launch -m tvprompt train ...`` runs it data-parallel over several GPUs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

# flag dest -> TrainConfig field, for flags whose names differ
_RENAMES = {"source": "sources", "source_device": "source_devices"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..training.config import COMPILE_MODES  # torch-free
    from ..training.trackers import REPORT_TO  # torch-free
    p = sub.add_parser(
        "train",
        help="learn a visual prompt (vp | evp | tvp) on source models",
        description="Learn a visual prompt. Preset of --method, then --config FILE, then flags.",
    )
    a = p.add_argument
    a("--method", choices=["vp", "evp", "tvp"],
      help="preset: vp (SGD+momentum), evp (normalised step), tvp (evp+FCA+TSE); default tvp")
    a("--preset", choices=["released"],
      help="a named recipe over the method's preset: released = the released TVP code step for step (docs/training.md)")
    a("--source", action="extend", nargs="+", metavar="MODEL",
      help="source model id (hf:ID_OR_DIR, zoo:NAME); several (after one flag or repeated) = an ensemble")
    a("--task", help="task name (see `tvp tasks`) or task YAML")
    a("--data", metavar="PATH", help="dataset folder or manifest")
    a("--guide", metavar="MODEL", help="CLIP-like guide for TSE (needed when --tse > 0)")
    a("--output", metavar="DIR", help="output folder (prompt/, last/, checkpoint/, metrics.jsonl)")
    a("--config", metavar="FILE.yaml", help="YAML file of training options (keys as below, - or _)")
    a("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    a("--overwrite", action="store_const", const=True, help="replace the results of an earlier run in --output")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, help="number of prompt updates")
    g.add_argument("--epochs", type=float, help="passes over the training split (instead of --steps)")
    g.add_argument("--batch-size", type=int, help="images per micro-batch, over all processes (default 16)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per update (effective batch = batch size x this)")
    g.add_argument("--update", choices=["sgd", "normalized"], help="update rule (set by --method)")
    g.add_argument("--lr", type=float, help="learning rate / step size γ (vp 40, evp 70, tvp 10)")
    g.add_argument("--momentum", type=float, help="momentum of the sgd update (0.9)")
    g.add_argument("--lr-schedule", choices=["cosine", "cosine_epoch", "constant"],
                   help="cosine per update (default), cosine_epoch (per epoch: released), constant")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up updates (0)")
    g.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule (0)")
    g = p.add_argument_group("prompt")
    g.add_argument("--shape", choices=["padding", "fixed_patch", "random_patch", "full"], help="prompt shape (padding)")
    g.add_argument("--width", type=int, help="prompt width p (30)")
    g.add_argument("--patch-size", type=int, help="side of a fixed_patch / random_patch prompt (30)")
    g.add_argument("--epsilon", type=float, help="L-inf bound of the full prompt (0.1)")
    g.add_argument("--image-size", type=int, help="side H of the prompted image (224)")
    g.add_argument("--no-clamp", dest="clamp", action="store_const", const=False,
                   help="leave δ unbounded (released code)")
    g.add_argument("--grad-norm-over", choices=["border", "frame"],
                   help="normalise the gradient over the border (default) or the whole frame, then mask (released)")
    g.add_argument("--image-fit", choices=["squash", "crop"],
                   help="squash to the frame (default) or shorter side + centre crop to the inner size (released)")
    g.add_argument("--image-resample", choices=["bilinear", "bicubic"],
                   help="resize kernel (bilinear; released bicubic)")
    g = p.add_argument_group("loss")
    g.add_argument("--fca", type=float, metavar="L1", help="λ1, weight of FCA (tvp 0.005)")
    g.add_argument("--tse", type=float, metavar="L2", help="λ2, weight of TSE (tvp 0.001)")
    g.add_argument("--fca-features", choices=["encoder", "projected"], help="features FCA aligns (encoder)")
    g.add_argument("--fca-distance", choices=["squared", "l2"],
                   help="per-token ½‖Δ‖² (squared, paper Eq. 4) or ‖Δ‖ (l2, released code)")
    g.add_argument("--fca-reference", choices=["shrunk", "original"], help="FCA reference image (shrunk)")
    g.add_argument("--tse-form", choices=["similarity", "contrastive"], help="TSE form (similarity)")
    g.add_argument("--minigpt4-template", choices=["chat", "released"],
                   help="MiniGPT-4/VPGTrans prompt: chat (default) or the released code's <Img>…</Img> + instruction")
    g.add_argument("--tse-template", metavar="TEXT",
                   help="TSE text instead of the task's, e.g. 'this is a photo of a {answer}'")
    g.add_argument("--tse-scale-clamp", type=float, metavar="S",
                   help="cap the guide's logit scale (released 100; 0 = none)")
    g.add_argument("--fca-cache-mb", type=float, help="FCA reference cache budget per source, MiB (1024)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, help="random horizontal flip (evp/tvp on)")
    g.add_argument("--jitter-scale", type=float, help="random zoom in [1-s, 1+s] (0)")
    g.add_argument("--jitter-translate", type=float, help="random shift up to this fraction (0)")
    g.add_argument("--seed", type=int, help="seed (0)")
    g = p.add_argument_group("validation and checkpoints")
    g.add_argument("--train-split", help="split to train on (train)")
    g.add_argument("--val-split", help="split to validate on (val; 'none' = no validation; never test)")
    g.add_argument("--val-every", type=int, help="validate every N updates (0 = at the end only)")
    g.add_argument("--val-max-samples", type=int, help="validate on a seeded subset of this size")
    g.add_argument("--val-batch-size", type=int, help="validation batch size (= --batch-size)")
    g.add_argument("--early-stop", type=int, metavar="N", help="stop after N validations without improvement")
    g.add_argument("--ckpt-every", type=int, help="checkpoint every N updates (100)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="device for δ and models (cuda if available, else cpu)")
    g.add_argument("--source-device", action="extend", nargs="+", metavar="DEVICE",
                   help="device per --source, in order")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype (auto: bf16 on GPU)")
    g.add_argument("--device-map", choices=["auto"], help="auto: spread each source over every GPU (big models)")
    g.add_argument("--revision", metavar="REV",
                   help="branch, tag or commit of the Hub source models (org/name@REV: one model)")
    g.add_argument("--trust-remote-code", action="store_const", const=True,
                   help="allow model families that run the checkpoint's own code (VisualGLM)")
    g.add_argument("--gradient-checkpointing", action="store_const", const=True, help="save memory in the models")
    g.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile the models' transformer blocks (off; try default on a GPU at batch >= 16)")
    g.add_argument("--num-workers", type=int,
                   help="image-decoding worker processes (default: up to 4 on a GPU, 0 on a CPU)")
    g.add_argument("--report-to", action="extend", nargs="+", choices=REPORT_TO, metavar="TRACKER",
                   help=f"log every metric row to these trackers ({', '.join(REPORT_TO)}; default none); "
                        "tensorboard writes OUTPUT/tensorboard")
    g.add_argument("--tensorboard", action="store_const", const=True, help="same as --report-to tensorboard")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="hide the progress bar")
    a("--json", action="store_true", help="print a JSON summary on stdout (for scripts) instead of the sentence")
    p.set_defaults(func=cmd_train)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (``None`` = not given)."""
    from ..training.config import config_keys

    known = config_keys()
    out = {}
    for dest, value in vars(args).items():
        name = _RENAMES.get(dest, dest)
        if name in known and value is not None:
            out[name] = value
    return out


def train_summary(result: Any) -> dict[str, Any]:
    """What ``tvp train --json`` prints: where the prompt is and how it was selected."""
    last_val = next((r for r in reversed(result.history) if "accuracy" in r), None)
    return {
        "output": str(result.output) if result.output else None,
        "prompt": str(result.output / "prompt") if result.output else None,
        "steps": int(result.step),
        "best_step": result.best_step,
        "best_val_accuracy": result.best_metric,
        "last_val_accuracy": last_val["accuracy"] if last_val else None,
    }


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..training.checkpoint import load_checkpoint
    from ..training.config import RUNTIME_FIELDS, absolute_paths, load_config_file, resolve_config
    from ..training.loop import train

    flags = absolute_paths(flag_values(args))
    file_values = absolute_paths(load_config_file(args.config)) if args.config else {}
    if args.resume:
        if not flags.get("output") and not file_values.get("output"):
            raise UsageError("--resume needs --output DIR (the folder holding checkpoint/)")
        output = flags.get("output") or file_values["output"]
        _, saved, _, _ = load_checkpoint(output)
        given = {**file_values, **flags}
        for key, value in given.items():
            if key not in RUNTIME_FIELDS and saved.get(key) != value:
                shown = f"--{key.replace('_', '-')}"
                raise UsageError(
                    f"{shown} {value!r} differs from the checkpoint's {saved.get(key)!r}; drop it to resume, "
                    "or start a new run with another --output"
                )
        config = resolve_config(saved.get("method"), flags={k: v for k, v in flags.items() if k in RUNTIME_FIELDS})
    else:
        config = resolve_config(None, file_values, flags)
        config.check_runnable()
    result = train(config, resume=args.resume)
    if args.json:
        print(json.dumps(train_summary(result)))
        return 0
    where = result.output / "prompt" if result.output else "(no output)"
    if result.best_step is not None:
        print(f"wrote {where} (val accuracy {result.best_metric:.4f} at step {result.best_step} of {result.step})")
    else:
        print(f"wrote {where} (step {result.step})")
    return 0
