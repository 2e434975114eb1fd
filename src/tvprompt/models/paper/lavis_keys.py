"""Read LAVIS-format checkpoints safely and map their keys onto transformers' BLIP-2 modules.

MiniGPT-4, VPGTrans and BLIVA were trained with LAVIS (or forks of it). Their runners save
``{"model": state_dict, "optimizer": ..., "config": ..., "scaler": ..., "epoch": ...}``, the state
dict without the frozen parameters but with every buffer (BLIVA's runner: with everything), with
keys like ``visual_encoder.blocks.3.attn.qkv.weight`` (EVA ViT-g), ``ln_vision.weight``,
``Qformer.bert.encoder.layer.0.crossattention.self.key.weight`` and ``query_tokens``; EVA's own
``eva_vit_g.pth`` holds the ViT without the ``visual_encoder.`` prefix. :func:`map_lavis_key`
says, for every key, where it goes in a transformers ``Blip2ForConditionalGeneration`` /
``InstructBlipForConditionalGeneration`` or why it is dropped; :func:`map_state_dict` applies it
to a whole dict and refuses any key it cannot account for. The mapping is the one transformers'
own BLIP-2 conversion script uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ...errors import TvpError
from ...files import load_torch_weights

# Keys the released files carry that none of the composed models uses, with the reason.
_DROPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Qformer\.cls\."), "Q-Former MLM head (stage-1 pre-training only)"),
    (re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"), "buffer; transformers rebuilds it"),
    (re.compile(r"^(vision_proj|text_proj|itm_head)\."), "stage-1 contrastive / matching heads"),
    (re.compile(r"^temp$"), "stage-1 contrastive temperature"),
    (re.compile(r"^(opt_proj|t5_proj|opt_model|t5_model)\."), "another BLIP-2 language model"),
    (re.compile(r"^visual_encoder\.(norm|fc_norm|head)\."), "EVA classification head (unused by BLIP-2)"),
    # The LAVIS-era LLaMA code registers inv_freq as a saved buffer; the runners keep buffers.
    (re.compile(r"^(llama_model|llm_model)\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
     "LLaMA rotary-embedding buffer (inv_freq); transformers rebuilds it"),
]
# The frozen LLM, as BLIVA's runner saves it with everything else. Only the plain LlamaForCausalLM
# weights: anything else under the LLM (LoRA, adapters) changes the model and must stay unknown.
LLM_PREFIXES = ("llama_model.", "llm_model.")
LLM_REASON = "frozen LLM weights (the LLM comes from --llama; checked against it)"
_LLM_WEIGHT = re.compile(
    r"^(llama_model|llm_model)\.(lm_head\.weight|model\.(embed_tokens|norm|layers\.\d+\."
    r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|input_layernorm|post_attention_layernorm))\.weight)$"
)
_TEXT_ONLY = re.compile(
    r"^Qformer\.bert\.(embeddings\.(word|position)_embeddings\.|encoder\.layer\.\d+\.(intermediate|output)\.)"
)

_VIT_BLOCK = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_NAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VIT_TOP = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "query_tokens": "query_tokens",
}


@dataclass
class KeyPlan:
    """Where every source key went: ``mapped`` (source -> target), ``dropped`` (source -> why)."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def map_lavis_key(
    key: str, *, vision_layers: int, qformer_text: bool, projections: Mapping[str, str]
) -> tuple[str, str]:
    """``("map", target)``, ``("drop", reason)``, ``("qv", "")`` (q/v bias, merged later) or ``("unknown", "")``.

    ``vision_layers``: ViT blocks the model keeps (BLIP-2 drops EVA's last one);
    ``qformer_text``: whether the Q-Former keeps its text embeddings and text FFN (InstructBLIP/BLIVA);
    ``projections``: LAVIS module name -> target name, e.g. ``{"llama_proj": "language_projection"}``.
    """
    if key in _VIT_TOP:
        return "map", _VIT_TOP[key]
    m = _VIT_BLOCK.match(key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i >= vision_layers:
            return "drop", f"ViT block {i} (BLIP-2 keeps the first {vision_layers} blocks)"
        if rest in ("attn.q_bias", "attn.v_bias"):
            return "qv", ""
        if rest in _VIT_BLOCK_NAMES:
            return "map", f"vision_model.encoder.layers.{i}.{_VIT_BLOCK_NAMES[rest]}"
        return "unknown", ""
    for pattern, reason in _DROPS:
        if pattern.search(key):
            return "drop", reason
    if _LLM_WEIGHT.match(key):
        return "drop", LLM_REASON
    if _TEXT_ONLY.search(key):
        if not qformer_text:
            return "drop", "Q-Former text branch (this model feeds only the query tokens)"
        key = key.replace("Qformer.bert.embeddings.", "qformer.embeddings.")
        return "map", key.replace("Qformer.bert.", "qformer.")
    if key.startswith("Qformer.bert.embeddings.LayerNorm."):
        suffix = key.rsplit(".", 1)[1]
        return "map", (f"qformer.embeddings.layernorm.{suffix}" if qformer_text else f"qformer.layernorm.{suffix}")
    if key.startswith("Qformer.bert.encoder."):
        target = key.replace("Qformer.bert.", "qformer.").replace(".attention.self.", ".attention.attention.")
        return "map", target.replace(".crossattention.self.", ".crossattention.attention.")
    head = key.split(".", 1)[0]
    if head in projections and key.split(".", 1)[-1] in ("weight", "bias"):
        return "map", f"{projections[head]}.{key.split('.', 1)[1]}"
    return "unknown", ""


def map_state_dict(
    state: Mapping[str, torch.Tensor], *, vision_layers: int, qformer_text: bool, projections: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], KeyPlan]:
    """Apply :func:`map_lavis_key` to every key; merge EVA's q/v biases into transformers' qkv bias."""
    out: dict[str, torch.Tensor] = {}
    plan = KeyPlan()
    qv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        action, arg = map_lavis_key(
            key, vision_layers=vision_layers, qformer_text=qformer_text, projections=projections
        )
        if action == "map":
            out[arg] = value
            plan.mapped[key] = arg
        elif action == "drop":
            plan.dropped[key] = arg
        elif action == "qv":
            m = _VIT_BLOCK.match(key)
            assert m is not None
            qv.setdefault(int(m.group(1)), {})[m.group(2).rsplit(".", 1)[1]] = value
        else:
            plan.unknown.append(key)
    for i, biases in sorted(qv.items()):
        if set(biases) != {"q_bias", "v_bias"}:
            missing = "v_bias" if "q_bias" in biases else "q_bias"
            plan.unknown.append(f"visual_encoder.blocks.{i}.attn.{missing} (missing; its pair is present)")
            continue
        q, v = biases["q_bias"], biases["v_bias"]
        target = f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"
        out[target] = torch.cat([q, torch.zeros_like(v), v])  # EVA has no key bias
        plan.mapped[f"visual_encoder.blocks.{i}.attn.q_bias"] = target
        plan.mapped[f"visual_encoder.blocks.{i}.attn.v_bias"] = target
    return out, plan


def format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_checkpoint(path: str | os.PathLike, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """A released ``.pth`` as a flat ``{key: tensor}``, read with ``weights_only=True`` only.

    Accepts ``{"model": {...}, ...}`` (the LAVIS runners' checkpoint, whose other entries are
    ignored), ``{"state_dict": {...}}`` or a bare state dict;
    ``prefix`` is prepended to every key (``"visual_encoder."`` for EVA's own file).
    """
    obj = load_torch_weights(path, TvpError)
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict", "module"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise TvpError(f"{path}: expected a state dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TvpError(f"{path}: entries that are not tensors: {format_keys(bad)}")
    return {prefix + str(k): v for k, v in obj.items()}
