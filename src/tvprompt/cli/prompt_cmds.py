"""`tvp apply`, `tvp show`, `tvp import-pth`: working with prompt directories."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import ImageError, TvpError, UsageError

ORDER = 10
log = logging.getLogger("tvprompt.cli")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="paste a prompt onto images, writing H×W PNGs")
    p.add_argument("--prompt", required=True, help="prompt directory or Hub repo id (user/name[@revision])")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--output", required=True, help="output folder (relative paths are kept)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report a count")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("show", help="print a prompt's config summary; render it")
    p.add_argument("prompt", metavar="PROMPT", help="prompt directory or Hub repo id (user/name[@revision])")
    p.add_argument("--png", metavar="FILE", help="write the rendered prompt to this PNG")
    p.add_argument("--json", action="store_true", help="print the full config as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("import-pth", help="convert a released-TVP-code checkpoint into a prompt directory")
    p.add_argument("file", metavar="FILE", help='.pth holding {"perturbation": Tensor[3,H,W]}')
    p.add_argument("--output", required=True, help="prompt directory to write")
    p.add_argument("--width", type=int, help="prompt width p (default: derived from the zero interior)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_import_pth)


def plan_outputs(inputs: list[str], output: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: files keep their name, folders keep relative paths; .png suffix."""
    from ..imageio import iter_image_files

    pairs: list[tuple[Path, Path]] = []
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            found = [(f, output / f.relative_to(src).with_suffix(".png")) for f in iter_image_files(src)]
            if not found:
                raise UsageError(f"{src}: folder holds no image files")
            pairs += found
        elif src.exists():
            pairs.append((src, output / (src.stem + ".png")))
        else:
            raise UsageError(f"{src}: no such file or folder")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise UsageError(f"{src} and {seen[dst]} would both be written to {dst}; apply them separately")
        seen[dst] = src
    return pairs


def cmd_apply(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..imageio import load_image, save_png
    from ..prompt import VisualPrompt

    prompt = VisualPrompt.from_pretrained(args.prompt)
    output = Path(args.output)
    pairs = plan_outputs(args.inputs, output)
    if not args.overwrite:
        for _, dst in pairs:
            if dst.exists():
                raise TvpError(f"{dst}: exists; pass --overwrite to replace it")
    gen = torch.Generator().manual_seed(prompt.config.seed)
    bad = 0
    with torch.no_grad():
        for src, dst in tqdm(pairs, desc="apply", unit="img", disable=None, file=sys.stderr):
            try:
                image = load_image(src)
            except ImageError as e:
                if not args.skip_bad:
                    raise
                log.warning("skipped %s", e)
                bad += 1
                continue
            save_png(prompt.apply(image[None], generator=gen)[0], dst)
    print(f"wrote {len(pairs) - bad} image(s) to {output}" + (f"; skipped {bad} bad input(s)" if bad else ""))
    return 1 if bad and bad == len(pairs) else 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..imageio import save_png
    from ..prompt import VisualPrompt

    prompt = VisualPrompt.from_pretrained(args.prompt)
    cfg = prompt.config
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    else:
        d = prompt.delta.detach()
        shape = f"{cfg.shape} {cfg.image_height}x{cfg.image_width}"
        if cfg.shape == "padding":
            shape += f", p={cfg.prompt_width}"
        elif cfg.shape.endswith("patch"):
            shape += f", patch={cfg.patch_size}"
        else:
            shape += f", eps={cfg.epsilon}"
        rows = [
            ("shape", shape),
            ("parameters", f"{prompt.num_parameters}"),
            ("clamp", str(cfg.clamp).lower()),
            ("delta range", f"[{d.min():.4f}, {d.max():.4f}]"),
            ("method", cfg.method or "-"),
            ("task", cfg.task or "-"),
            ("sources", ", ".join(s.get("model_id", "?") for s in cfg.sources) or "-"),
        ]
        rows += [(f"metric {k}", f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in cfg.metrics.items()]
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if args.png:
        save_png(prompt.render(), args.png)
        print(f"wrote {args.png}")
    return 0


def cmd_import_pth(args: argparse.Namespace) -> int:
    from ..convert import import_released_checkpoint

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise TvpError(f"{out}: exists; pass --overwrite to replace it")
    prompt = import_released_checkpoint(args.file, width=args.width)
    prompt.save_pretrained(out)
    print(f"wrote {out} (p={prompt.config.prompt_width}, clamp={str(prompt.config.clamp).lower()})")
    return 0
