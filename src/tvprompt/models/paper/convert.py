"""Convert the released MiniGPT-4, VPGTrans and BLIVA checkpoints into transformers directories.

Each converter reads the released ``.pth`` files with ``torch.load(weights_only=True)`` only,
merges them in LAVIS's load order (later files override earlier ones), maps every key with
:mod:`tvprompt.models.paper.lavis_keys`, and refuses to write anything unless every source key is
either mapped or deliberately dropped (with a reason, logged once per reason) and every weight
of the composed model has a source. The language model comes from a transformers Vicuna/LLaMA
directory; LLM weights a file carries (BLIVA's runner saves them all) are dropped after checking
that they equal that directory's. The output
is a plain ``save_pretrained`` directory (safetensors, config, tokenizer, preprocessor config,
``conversion.json`` recording where every key went) that ``load_adapter("hf:<dir>")`` loads.

Shapes fix the widths, depths, patch size, image size and query count; head counts cannot be
read off weights and default to the released models' (ViT-g 16 heads, Q-Former 12).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import TvpError, UsageError
from ...files import atomic_dir
from .arch import MINIGPT4_TEMPLATE, MODEL_CLASSES, BlivaConfig, MiniGPT4Config, VPGTransConfig
from .lavis_keys import LLM_REASON, format_keys, map_state_dict, read_checkpoint

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LAVIS blip_image_eval normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SLOW_TOKENIZER_EXTRA = "slow-tokenizer"  # pyproject extra: sentencepiece + protobuf
# The Vicuna each release was trained with (its own preparation notes); named when --llama is not it.
VICUNA = {"minigpt4": "Vicuna v0 (7B or 13B)", "vpgtrans": "Vicuna-7B v0", "bliva": "Vicuna-7B v0"}


@dataclass
class Source:
    """One released file and the prefix its keys need (``visual_encoder.`` for ``eva_vit_g.pth``)."""

    path: str | os.PathLike
    prefix: str = ""
    role: str = "checkpoint"


@dataclass
class ConvertOptions:
    vision_layers: int = 39  # BLIP-2 drops EVA ViT-g's 40th block
    vision_heads: int = 16
    qformer_heads: int = 12
    dtype: str = "float16"
    overwrite: bool = False


def merge_sources(sources: Sequence[Source]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All keys of all files, later files winning (LAVIS load order); also key -> file that provided it."""
    merged: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for src in sources:
        state = read_checkpoint(src.path, prefix=src.prefix)
        overridden = [k for k in state if k in merged]
        if overridden:
            log.info("%s overrides %d keys of earlier files", src.path, len(overridden))
        merged.update(state)
        origin.update({k: os.path.basename(str(src.path)) for k in state})
    return merged, origin


def _layer_indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def _need(state: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise TvpError(f"the checkpoints hold no {key!r} ({what}); pass the file that has it")
    return state[key]


def infer_vision_config(state: dict[str, torch.Tensor], opts: ConvertOptions) -> dict[str, Any]:
    patch = _need(state, "visual_encoder.patch_embed.proj.weight", "EVA ViT patch embedding; pass --eva-vit")
    pos = _need(state, "visual_encoder.pos_embed", "EVA ViT position embedding")
    blocks = _layer_indices(state, r"^visual_encoder\.blocks\.(\d+)\.")
    if len(blocks) < opts.vision_layers:
        raise TvpError(f"the EVA ViT weights hold {len(blocks)} blocks, fewer than --vision-layers "
                       f"{opts.vision_layers}")
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise TvpError(f"visual_encoder.pos_embed has {pos.shape[1]} positions, not 1 + a square grid")
    if hidden % opts.vision_heads:
        raise UsageError(f"--vision-heads {opts.vision_heads} does not divide the ViT width {hidden}")
    return {
        "hidden_size": hidden,
        "intermediate_size": int(_need(state, "visual_encoder.blocks.0.mlp.fc1.weight", "ViT MLP").shape[0]),
        "num_hidden_layers": opts.vision_layers,
        "num_attention_heads": opts.vision_heads,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    }


def infer_qformer_config(state: dict[str, torch.Tensor], opts: ConvertOptions, text: bool) -> dict[str, Any]:
    layers = _layer_indices(state, r"^Qformer\.bert\.encoder\.layer\.(\d+)\.")
    if not layers:
        raise TvpError("the checkpoints hold no Q-Former weights (Qformer.bert.encoder.layer.*)")
    cross = _layer_indices(state, r"^Qformer\.bert\.encoder\.layer\.(\d+)\.crossattention\.")
    freq = cross[1] - cross[0] if len(cross) > 1 else max(len(layers), 1)
    if cross and (cross[0] != 0 or cross != list(range(0, len(layers), freq))):
        raise TvpError(f"Q-Former cross-attention sits in layers {cross}, not every n-th layer from 0")
    hidden = int(_need(state, "query_tokens", "Q-Former query tokens").shape[-1])
    if hidden % opts.qformer_heads:
        raise UsageError(f"--qformer-heads {opts.qformer_heads} does not divide the Q-Former width {hidden}")
    ffn = "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"
    cfg: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": opts.qformer_heads,
        "intermediate_size": int(_need(state, ffn, "Q-Former query FFN").shape[0]),
        "cross_attention_frequency": freq,
        "encoder_hidden_size": int(state["visual_encoder.patch_embed.proj.weight"].shape[0]),
        "layer_norm_eps": 1e-12,
    }
    if text:
        words = _need(state, "Qformer.bert.embeddings.word_embeddings.weight", "Q-Former text embeddings")
        positions = _need(state, "Qformer.bert.embeddings.position_embeddings.weight", "Q-Former positions")
        cfg.update(vocab_size=int(words.shape[0]), max_position_embeddings=int(positions.shape[0]))
    return cfg


def _load_llm(llama_dir: str | os.PathLike, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(llama_dir)
    if not (path / "config.json").is_file():
        raise UsageError(f"{llama_dir}: not a transformers model directory (no config.json); pass the Vicuna/LLaMA "
                         "folder")
    try:
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise TvpError(f"{llama_dir}: could not load the language model ({_first_line(e)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, ImportError, RuntimeError, TypeError) as e:  # differs across transformers versions
        missing = missing_slow_tokenizer_deps() if _slow_tokenizer_only(path) else []
        if missing:
            raise UsageError(f"{llama_dir}: the tokenizer is a slow LLaMA one (tokenizer.model, no tokenizer.json) "
                             f"and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                             f"pip install 'tvprompt[{SLOW_TOKENIZER_EXTRA}]'") from None
        raise TvpError(f"{llama_dir}: could not load the tokenizer ({_first_line(e)})") from None
    return llm, tokenizer


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _slow_tokenizer_only(path: Path) -> bool:
    """A Vicuna folder as FastChat's apply_delta writes it: SentencePiece ``tokenizer.model`` only."""
    return (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file()


def missing_slow_tokenizer_deps() -> list[str]:
    """What transformers needs to turn ``tokenizer.model`` into a fast tokenizer and is not installed."""
    missing = []
    for package, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package (google) is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def _image_token_id(tokenizer: Any, llama_dir: str | os.PathLike) -> int:
    """The LLaMA ``<unk>`` id: byte-fallback SentencePiece never emits it, so it can mark image slots."""
    vocab = tokenizer.get_vocab()
    if "<unk>" not in vocab:
        raise TvpError(f"{llama_dir}: the tokenizer has no '<unk>' token to use as the image placeholder")
    return int(vocab["<unk>"])


def _grow_vocab(llm: Any, size: int) -> None:
    """Resize to ``size`` tokens; new rows (BLIVA's ``[PAD]``) get the mean row, deterministically.

    The released BLIVA resizes at every load and so draws that row at random each time; it only
    ever sits at padded positions, but it also enters the softmax normalisation of the LM head.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m): m for m in (llm.get_input_embeddings(), llm.get_output_embeddings())}.values():
            emb.weight[old:] = emb.weight[:old].mean(0, keepdim=True)


def refuse_grouped_patch_projection(state: dict[str, torch.Tensor], origin: dict[str, str]) -> None:
    """MiniGPT-4's Llama-2 release has no Q-Former: ``llama_proj`` reads 4 concatenated ViT patches."""
    proj, queries = state.get("llama_proj.weight"), state.get("query_tokens")
    vit = state.get("visual_encoder.patch_embed.proj.weight")
    if proj is None or proj.ndim != 2 or vit is None:
        return
    width = int(proj.shape[1])
    if width == 4 * int(vit.shape[0]) and (queries is None or width != int(queries.shape[-1])):
        raise UsageError(
            f"{origin.get('llama_proj.weight', '?')}: llama_proj takes {width} inputs, 4 grouped ViT patches "
            f"without a Q-Former (the Llama-2 MiniGPT-4 release, has_qformer: False); tvprompt does not support "
            f"that model, only the Vicuna MiniGPT-4 (llama_proj over the 32 Q-Former tokens)")


def check_saved_llm(state: dict[str, torch.Tensor], dropped: dict[str, str], llm: Any, family: str,
                    llama_dir: str | os.PathLike, kept_rows: int) -> int:
    """The frozen LLM weights a file carries (BLIVA's runner saves them all) must be the ``--llama`` ones.

    ``kept_rows``: vocabulary rows the LLM had before the converter added tokens. Rows the file has
    beyond them (BLIVA's ``[PAD]``, drawn when BLIVA resized the LLM) are taken from the file, as
    BLIVA loads them. Returns the number of weights checked.
    """
    saved = sorted(k for k, why in dropped.items() if why == LLM_REASON)
    target = llm.state_dict()
    bad: list[str] = []
    for key in saved:
        name, value = key.split(".", 1)[1], state[key]
        mine = target.get(name)
        if mine is None:
            bad.append(f"{key} (the LLM has no {name})")
            continue
        if tuple(value.shape) != tuple(mine.shape):
            bad.append(f"{key} {tuple(value.shape)} vs {tuple(mine.shape)}")
            continue
        rows = kept_rows if name in ("model.embed_tokens.weight", "lm_head.weight") else value.shape[0]
        rtol = max(1e-3, 2 * torch.finfo(mine.dtype).eps)  # the file is fp16; --dtype may round further
        if not torch.allclose(value[:rows].to(mine.dtype).float(), mine[:rows].float(), rtol=rtol, atol=1e-6):
            bad.append(f"{key} (values differ)")
        elif rows < value.shape[0]:
            with torch.no_grad():
                mine[rows:] = value[rows:].to(mine.dtype)
    if bad:
        raise TvpError(f"the checkpoints carry the LLM they were trained with and {llama_dir} is not it "
                       f"({len(bad)} of {len(saved)} weights differ: {format_keys(bad, 3)}); pass {VICUNA[family]}")
    return len(saved)


def assemble_model(config: Any, family: str, mapped: dict[str, torch.Tensor], llm: Any,
                    dtype: torch.dtype, origin: dict[str, str]) -> Any:
    """Instantiate the composed model on the meta device and assign every weight, checking names and shapes.

    ``mapped``: the converted vision/Q-Former/projection weights; ``llm``: the language model whose
    weights become ``language_model.*``. Nothing is copied for the LLM (tensors are assigned).
    """
    model_cls = MODEL_CLASSES[family]
    with torch.device("meta"):
        model = model_cls(config)
    full = {k: v.to(dtype) for k, v in mapped.items()}
    full.update({f"language_model.{k}": v for k, v in llm.state_dict().items()})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(full))
    extra = sorted(set(full) - set(expected))
    if missing:
        raise TvpError(f"no source for {len(missing)} weights of the {family} model: {format_keys(missing)}")
    if extra:
        named = [f"{k} (from {origin.get(k, 'the LLM')})" for k in extra]
        raise TvpError(f"{len(extra)} mapped keys have no place in the {family} model: {format_keys(named)}")
    bad = [
        f"{k} {tuple(full[k].shape)} (from {origin.get(k, 'the LLM')}) vs {tuple(v.shape)}"
        for k, v in expected.items() if tuple(full[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise TvpError(f"shape mismatch for {len(bad)} weights: {format_keys(bad, 6)}")
    model.load_state_dict(full, strict=True, assign=True)
    return model


def _write(model: Any, tokenizer: Any, output: str | os.PathLike, record: dict[str, Any], overwrite: bool,
           extra_tokenizer: Any | None = None) -> Path:
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    size = model.config.vision_config.image_size
    processor = {
        "image_processor_type": "BlipImageProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if extra_tokenizer is not None:
            extra_tokenizer.save_pretrained(tmp / "qformer_tokenizer")
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def _record(family: str, sources: Sequence[Source], llama_dir: str | os.PathLike, plan: Any) -> dict[str, Any]:
    reasons = Counter(plan.dropped.values())
    return {
        "family": family,
        "sources": [{"role": s.role, "file": os.path.basename(str(s.path))} for s in sources],
        "language_model": os.path.basename(str(Path(llama_dir).resolve())),
        "mapped_keys": len(plan.mapped),
        "dropped_keys": dict(sorted(reasons.items())),
        "dropped": dict(sorted(plan.dropped.items())),
    }


def convert_lavis_composition(
    family: str,
    sources: Sequence[Source],
    llama_dir: str | os.PathLike,
    output: str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    prompt_template: str | None = None,
    end_sym: str | None = None,
    qformer_tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Convert LAVIS-format files + a LLaMA directory into a ``family`` model directory."""
    opts = options or ConvertOptions()
    if family not in MODEL_CLASSES:
        raise UsageError(f"unknown family {family!r}; known: {', '.join(MODEL_CLASSES)}")
    if opts.dtype not in _DTYPES:
        raise UsageError(f"--dtype {opts.dtype!r} is not one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[opts.dtype]
    if prompt_template is not None and "{}" not in prompt_template:
        raise UsageError(f"--prompt-template {prompt_template!r} has no '{{}}' where the instruction goes")
    if prompt_template is not None and family != "bliva" and "<ImageHere>" not in prompt_template:
        raise UsageError(f"--prompt-template {prompt_template!r} has no '<ImageHere>' where the image goes")
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    bliva = family == "bliva"
    state, origin = merge_sources(sources)
    projections = {"llm_proj": "language_projection", "vision_project": "vision_project"} if bliva else {
        "llama_proj": "language_projection"}
    if not bliva:
        refuse_grouped_patch_projection(state, origin)
    vision = infer_vision_config(state, opts)
    qformer = infer_qformer_config(state, opts, text=bliva)
    mapped, plan = map_state_dict(state, vision_layers=opts.vision_layers, qformer_text=bliva, projections=projections)
    if plan.unknown:
        raise TvpError(f"{len(plan.unknown)} keys of the checkpoints cannot be mapped: "
                       f"{format_keys(sorted(plan.unknown))}")
    for reason, n in sorted(Counter(plan.dropped.values()).items()):
        log.info("dropping %d keys: %s", n, reason)
    target_origin = {plan.mapped[k]: origin.get(k, "?") for k in plan.mapped}

    llm, tokenizer = _load_llm(llama_dir, dtype)
    kept_rows = int(llm.get_input_embeddings().weight.shape[0])
    qformer_tokenizer = None
    if bliva:
        if qformer_tokenizer_dir is None:
            raise UsageError("BLIVA needs --qformer-tokenizer: a bert-base-uncased tokenizer directory")
        from transformers import AutoTokenizer

        qformer_tokenizer = AutoTokenizer.from_pretrained(qformer_tokenizer_dir, truncation_side="left")
        qformer_tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # LAVIS Blip2Base.init_tokenizer
        if len(qformer_tokenizer) != qformer["vocab_size"]:
            raise TvpError(f"{qformer_tokenizer_dir}: tokenizer has {len(qformer_tokenizer)} tokens + [DEC], the "
                           f"Q-Former embeds {qformer['vocab_size']}; pass the bert-base-uncased tokenizer")
        # BLIVA's tokenizer set-up (bliva_vicuna7b.py): pad [PAD]; bos, eos and unk all '</s>'.
        tokenizer.add_special_tokens({"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>",
                                      "unk_token": "</s>"})
        _grow_vocab(llm, len(tokenizer))
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # MiniGPT-4 / VPGTrans pad with EOS (never attended)
    if check_saved_llm(state, plan.dropped, llm, family, llama_dir, kept_rows):
        log.info("the LLM weights in the checkpoints equal those of %s", llama_dir)
        for key in [k for k, why in plan.dropped.items() if why == LLM_REASON]:
            del state[key]  # a second copy of the LLM: free it before the model is assembled and written
    image_token = _image_token_id(tokenizer, llama_dir)

    common = dict(vision_config=vision, qformer_config=qformer, text_config=llm.config.to_dict(),
                  num_query_tokens=int(state["query_tokens"].shape[1]), image_token_index=image_token)
    if bliva:
        config = BlivaConfig(**common, prompt_template=prompt_template or "{}")
    else:
        config_cls = MiniGPT4Config if family == "minigpt4" else VPGTransConfig
        config = config_cls(**common, prompt_template=prompt_template or MINIGPT4_TEMPLATE, end_sym=end_sym or "###")
    config.dtype = dtype
    model = assemble_model(config, family, mapped, llm, dtype, target_origin)
    record = _record(family, sources, llama_dir, plan)
    path = _write(model, tokenizer, out, record, opts.overwrite, qformer_tokenizer)
    log.info("wrote %s: %d keys mapped, %d dropped (%s)", path, len(plan.mapped), len(plan.dropped),
             ", ".join(f"{n} {r}" for r, n in record["dropped_keys"].items()) or "none")
    return path


def convert_minigpt4(lavis_ckpt: str | os.PathLike, stage2: str | os.PathLike, llama_dir: str | os.PathLike,
                     output: str | os.PathLike, *, eva_vit: str | os.PathLike | None = None,
                     options: ConvertOptions | None = None, prompt_template: str | None = None,
                     end_sym: str | None = None) -> Path:
    """MiniGPT-4: [eva_vit_g.pth] + the LAVIS BLIP-2 file (ViT, ln_vision, Q-Former, queries) + stage 2 (llama_proj)."""
    sources = ([Source(eva_vit, "visual_encoder.", "eva_vit")] if eva_vit else []) + [
        Source(lavis_ckpt, "", "lavis_blip2"), Source(stage2, "", "stage2")]
    state = read_checkpoint(stage2)
    if not {"llama_proj.weight", "llama_proj.bias"} <= set(state):
        raise TvpError(f"{stage2}: expected the stage-2 file holding llama_proj.weight and llama_proj.bias")
    return convert_lavis_composition("minigpt4", sources, llama_dir, output, options,
                                     prompt_template=prompt_template, end_sym=end_sym)


def convert_vpgtrans(ckpt: str | os.PathLike, llama_dir: str | os.PathLike, output: str | os.PathLike, *,
                     eva_vit: str | os.PathLike | None = None, options: ConvertOptions | None = None,
                     prompt_template: str | None = None, end_sym: str | None = None) -> Path:
    """VPGTrans (VL-Vicuna): [eva_vit_g.pth] + its checkpoint (ln_vision, Q-Former, queries, llama_proj)."""
    sources = ([Source(eva_vit, "visual_encoder.", "eva_vit")] if eva_vit else []) + [Source(ckpt, "", "vpgtrans")]
    return convert_lavis_composition("vpgtrans", sources, llama_dir, output, options,
                                     prompt_template=prompt_template, end_sym=end_sym)


def convert_bliva(ckpt: str | os.PathLike, llama_dir: str | os.PathLike, output: str | os.PathLike, *,
                  qformer_tokenizer: str | os.PathLike, eva_vit: str | os.PathLike | None = None,
                  options: ConvertOptions | None = None) -> Path:
    """BLIVA: [eva_vit_g.pth] + ``bliva_vicuna7b.pth`` (Q-Former with text branch, llm_proj, vision_project;
    as BLIVA's runner saves it, also the ViT and the frozen LLM, which must equal ``llama_dir``'s)."""
    sources = ([Source(eva_vit, "visual_encoder.", "eva_vit")] if eva_vit else []) + [Source(ckpt, "", "bliva")]
    return convert_lavis_composition("bliva", sources, llama_dir, output, options,
                                     qformer_tokenizer_dir=qformer_tokenizer)
