"""`tvp convert {minigpt4,vpgtrans,bliva}`: released checkpoints -> transformers model directories."""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llama", required=True, metavar="DIR",
                   help="the Vicuna v0 model as a transformers folder (a folder with only the slow tokenizer.model "
                        "needs: pip install 'tvprompt[slow-tokenizer]')")
    p.add_argument("--eva-vit", metavar="FILE", help="eva_vit_g.pth, when the checkpoints do not hold the ViT")
    p.add_argument("--output", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the written weights (default: float16, the released precision)")
    p.add_argument("--vision-layers", type=int, default=39, help="ViT blocks kept (BLIP-2 ViT-g: 39)")
    p.add_argument("--vision-heads", type=int, default=16, help="ViT attention heads (ViT-g: 16)")
    p.add_argument("--qformer-heads", type=int, default=12, help="Q-Former attention heads (12)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def _template(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-template", metavar="TEXT",
                   help="conversation template with <ImageHere> and {} (default: "
                        "'###Human: <Img><ImageHere></Img> {} ###Assistant: ')")
    p.add_argument("--end-sym", metavar="TEXT", help="what ends an answer (default: ###)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert released MiniGPT-4 / VPGTrans / BLIVA checkpoints")
    kinds = p.add_subparsers(dest="kind", metavar="MODEL", required=True)

    k = kinds.add_parser("minigpt4",
                         help="MiniGPT-4 on Vicuna v0 (7B or 13B): LAVIS BLIP-2 file + stage-2 llama_proj; not the "
                              "Llama-2 release (no Q-Former)")
    k.add_argument("--lavis-ckpt", required=True, metavar="FILE",
                   help="LAVIS BLIP-2 checkpoint with the Q-Former (e.g. blip2_pretrained_flant5xxl.pth)")
    k.add_argument("--stage2", required=True, metavar="FILE", help="MiniGPT-4 stage-2 checkpoint (llama_proj)")
    _common(k)
    _template(k)
    k.set_defaults(func=cmd_convert)

    k = kinds.add_parser("vpgtrans", help="VPGTrans (VL-Vicuna-7B)")
    k.add_argument("--ckpt", required=True, metavar="FILE", help="the VPGTrans checkpoint (vl-vicuna.pth)")
    _common(k)
    _template(k)
    k.set_defaults(func=cmd_convert)

    k = kinds.add_parser("bliva", help="BLIVA (Vicuna-7B)")
    k.add_argument("--ckpt", required=True, metavar="FILE", help="bliva_vicuna7b.pth")
    k.add_argument("--qformer-tokenizer", required=True, metavar="DIR", help="a bert-base-uncased tokenizer folder")
    _common(k)
    k.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.paper import convert as pc

    opts = pc.ConvertOptions(vision_layers=args.vision_layers, vision_heads=args.vision_heads,
                             qformer_heads=args.qformer_heads, dtype=args.dtype, overwrite=args.overwrite)
    if args.kind == "minigpt4":
        out = pc.convert_minigpt4(args.lavis_ckpt, args.stage2, args.llama, args.output, eva_vit=args.eva_vit,
                                  options=opts, prompt_template=args.prompt_template, end_sym=args.end_sym)
    elif args.kind == "vpgtrans":
        out = pc.convert_vpgtrans(args.ckpt, args.llama, args.output, eva_vit=args.eva_vit, options=opts,
                                  prompt_template=args.prompt_template, end_sym=args.end_sym)
    else:
        out = pc.convert_bliva(args.ckpt, args.llama, args.output, qformer_tokenizer=args.qformer_tokenizer,
                               eva_vit=args.eva_vit, options=opts)
    print(f"wrote {out} (load it with model id hf:{out}; key accounting in {out}/conversion.json)")
    return 0
