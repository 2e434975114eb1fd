"""`tvp analyze NAME`: the paper's analyses (ablation, width, data-scale, cross-dataset, corruption, efficiency).

``accelerate launch -m tvprompt analyze ...`` shards every training run and evaluation of the analysis
over the processes (one per GPU); the results are those of one process. ``efficiency`` times one device.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._model_args import add_model_args, load_options


def _train_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("training (one prompt per variant; reused on a rerun when unchanged)")
    g.add_argument("--source", action="extend", nargs="+", default=[], metavar="MODEL", required=required,
                   help="white-box model(s) to train on (several after one flag, or the flag repeated = ensemble)")
    g.add_argument("--train-data", metavar="PATH", help="training data (default: --data)")
    g.add_argument("--method", default="tvp", choices=["vp", "evp", "tvp"], help="trainer preset (default tvp)")
    g.add_argument("--guide", help="CLIP-like guide model for TSE")
    g.add_argument("--steps", type=int, help="prompt updates per trained prompt")
    g.add_argument("--lr", type=float, help="learning rate / step size γ (default: the method's preset)")
    g.add_argument("--train-batch-size", type=int, default=16, help="training batch (default 16)")
    g.add_argument("--width", type=int, default=30, help="prompt width p (default 30)")
    g.add_argument("--image-size", type=int, default=224, help="prompted image side (default 224)")
    g.add_argument("--fca", type=float, help="λ1, FCA weight (default: the method's preset, tvp 0.005)")
    g.add_argument("--tse", type=float, help="λ2, TSE weight (default: the method's preset, tvp 0.001; needs --guide)")


def _seeds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train each variant N times, with training seeds --seed … --seed+N-1 (one folder each, "
                   "reused on a rerun); the table and plot show mean ± sd (sample sd) over the seeds, all evaluated "
                   "on the same samples (default 1)")


def _eval_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--model", action="extend", nargs="+", required=True, metavar="MODEL",
                   help="target models (several after one flag, or the flag repeated)")
    p.add_argument("--task", required=data_required, help="task name or YAML")
    p.add_argument("--data", required=data_required, metavar="PATH", help="dataset path")
    p.add_argument("--split", default="test", help="evaluation split (default test)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate N samples only: a subset seeded by --seed, stratified by class")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch (default 16)")
    p.add_argument("--seed", type=int, default=0,
                   help="draws the --limit evaluation subset and seeds training (default 0); with --seeds N the "
                   "training seeds are SEED … SEED+N-1 and the evaluation subset stays the one SEED draws")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--reduced", action="store_true", help="a small grid (quick checks, tests)")
    add_model_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")

ORDER = 65  # `tvp --help` lists commands by ORDER


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser("analyze", help="run one of the paper's analyses (tables, JSON and plots)")
    names = top.add_subparsers(dest="analysis", metavar="NAME", required=True)

    p = names.add_parser("ablation", help="Tab. 2: none / FCA / TSE / FCA+TSE")
    _eval_args(p)
    _train_args(p)
    _seeds_arg(p)
    p = names.add_parser("width", help="Tab. 3: prompt width sweep")
    _eval_args(p)
    _train_args(p)
    _seeds_arg(p)
    p.add_argument("--widths", type=int, nargs="+", help="widths p to train (default 10 20 30 40 50)")
    p = names.add_parser("data-scale", help="Fig. 5: fraction of training data")
    _eval_args(p)
    _train_args(p)
    _seeds_arg(p)
    p.add_argument("--fractions", type=float, nargs="+", help="fractions in (0, 1] (default 0.01 … 1)")
    p = names.add_parser("cross-dataset", help="Tab. 4: one prompt on other datasets of the same kind")
    _eval_args(p, data_required=False)
    _train_args(p, required=False)
    p.add_argument("--prompt", metavar="PROMPT",
                   help="an existing prompt, directory or Hub id (else one is trained from --task/--data)")
    p.add_argument("--eval", action="append", required=True, metavar="TASK=PATH", help="dataset to evaluate on")
    p = names.add_parser("corruption", help="Tab. 9: corruptions × severities")
    _eval_args(p)
    _train_args(p, required=False)
    p.add_argument("--prompt", metavar="PROMPT", help="an existing prompt, directory or Hub id (else one is trained)")
    p.add_argument("--corruptions", nargs="+",
                   help="corruption names (default: all 15; strengths set by --corruption-strength)")
    p.add_argument("--corruption-strength", choices=["cifar10c", "imagenetc"], default="cifar10c",
                   help="whose constants: cifar10c (default; made for 32 px) or imagenetc (made for 224 px, "
                   "for images of 224 px and more); spatial sizes scale with the image side")
    p.add_argument("--severities", type=int, nargs="+", help="severities 1-5 (default all)")
    p = names.add_parser("attention", help="Fig. 4: where each model looks with and without a prompt (PNG grid)")
    p.add_argument("--prompt", required=True, metavar="DIR", help="a trained prompt folder")
    p.add_argument("--model", action="extend", nargs="+", required=True, metavar="MODEL", help="models to show")
    p.add_argument("--task", required=True, help="task name or YAML")
    p.add_argument("--data", required=True, metavar="PATH", help="dataset path")
    p.add_argument("--split", default="test", help="split the images come from (default test)")
    p.add_argument("--n-images", type=int, default=4, help="images (rows of the grid, default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, metavar="DIR")
    p = names.add_parser("efficiency", help="Tab. 5: prompt training vs full fine-tuning vs LoRA")
    p.add_argument("--model", required=True, metavar="MODEL", help="the model to measure on")
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True, metavar="PATH")
    p.add_argument("--methods", nargs="+", default=["prompt", "lora", "full"], help="subset of prompt lora full")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--reduced", action="store_true", help="2 steps at batch 2")
    add_model_args(p)
    top.set_defaults(func=cmd_analyze)


def _recipe(args: argparse.Namespace):
    from ..errors import UsageError
    from ..evaluation.analyses import TrainRecipe

    if not args.source:
        return None
    data = args.train_data or args.data
    if not args.task or not data:
        raise UsageError("training needs --task and --train-data (or --data)")
    return TrainRecipe(sources=args.source, task=args.task, data=data, method=args.method, guide=args.guide,
                       steps=args.steps, batch_size=args.train_batch_size, width=args.width,
                       image_size=args.image_size, fca=args.fca, tse=args.tse, seed=args.seed,
                       extra={} if args.lr is None else {"lr": args.lr})


def _parse_eval_sets(items: list[str]) -> list[tuple[str, str]]:
    from ..errors import UsageError

    out = []
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise UsageError(f"--eval {item!r}: expected TASK=PATH")
        out.append((task, path))
    return out


def cmd_analyze(args: argparse.Namespace) -> int:
    import functools

    from ..evaluation import analyses as an
    from ..evaluation.evaluate import Backends, EvalSetup

    name = args.analysis
    an.check_seeds(getattr(args, "seeds", 1))  # before anything is loaded or written
    if name in ("attention", "efficiency") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ..errors import UsageError

        why = "draws a few images" if name == "attention" else "times one device"
        raise UsageError(f"tvp analyze {name} {why}: run it without accelerate launch")
    if name == "attention":
        from ..evaluation.attention import attention_figure

        summary = attention_figure(args.prompt, args.model, args.task, args.data, args.output, split=args.split,
                                   n_images=args.n_images, seed=args.seed)
        for model, row in summary["models"].items():
            print(f"{model}: grid {row['grid'][0]}x{row['grid'][1]}, attention on the image area "
                  f"{row['centre_share_no_prompt']:.2f} without / {row['centre_share_prompt']:.2f} with the prompt")
        print(f"wrote {args.output}/attention.png and attention.json")
        return 0
    options = load_options(args)
    backends = Backends.default(**options)
    if name == "efficiency":
        from ..evaluation.efficiency import efficiency

        kw = {k: getattr(args, k) for k in ("batch_size", "steps", "width", "image_size", "lora_rank", "seed")}
        if args.reduced:
            kw["steps"] = min(kw["steps"], 2)
            kw["batch_size"] = min(kw["batch_size"], 2)
        efficiency(args.model, args.task, args.data, args.output, reduced=args.reduced, methods=args.methods,
                   backends=backends, **kw)
    else:
        setup = EvalSetup(task=args.task or "", data=args.data or "", split=args.split, limit=args.limit,
                          batch_size=args.batch_size, seed=args.seed, image_size=args.image_size,
                          progress=args.progress,
                          corruption_strength=getattr(args, "corruption_strength", "cifar10c"))
        runtime = {"device": args.device, "device_map": args.device_map, "dtype": args.dtype,
                   "revision": args.revision, "trust_remote_code": args.trust_remote_code}
        trainer = functools.partial(an.train_prompt, runtime={k: v for k, v in runtime.items() if v is not None})
        common = {"reduced": args.reduced, "backends": backends, "trainer": trainer}
        recipe = _recipe(args)
        if name == "ablation":
            an.ablation(recipe, args.model, setup, args.output, seeds=args.seeds, **common)
        elif name == "width":
            an.width_sweep(recipe, args.model, setup, args.output, widths=args.widths, seeds=args.seeds, **common)
        elif name == "data-scale":
            an.data_scale(recipe, args.model, setup, args.output, fractions=args.fractions, seeds=args.seeds,
                          **common)
        elif name == "cross-dataset":
            an.cross_dataset(_parse_eval_sets(args.eval), args.model, setup, args.output, prompt=args.prompt,
                             base=recipe, **common)
        elif name == "corruption":
            an.corruption(args.model, setup, args.output, prompt=args.prompt, base=recipe,
                          corruptions=args.corruptions, severities=args.severities, **common)
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process reports
        return 0
    file = {"data-scale": "data_scale", "cross-dataset": "cross_dataset"}.get(name, name)
    print((Path(args.output) / f"{file}.md").read_text(encoding="utf-8"))
    print(f"wrote {args.output}/{file}.json, .md and .png")
    return 0
