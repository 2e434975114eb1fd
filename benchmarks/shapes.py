"""Model shapes for benchmarks, built from configs with random weights.

Random-init weights cost exactly what pretrained ones cost, so speed measured on them holds for
the real checkpoints. ``tiny`` uses the test builders (seconds on a CPU), ``small`` a CPU-sized
model with a 224-px ViT (196 patches) for ratios, ``7b`` the real LLaVA-1.5-7B shape
(CLIP ViT-L/14-336 + Llama-2-7B) or InstructBLIP-Vicuna-7B shape (EVA ViT-g/14 + 32-query Q-Former +
Vicuna-7B); GPU only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

SIZES = ("tiny", "small", "7b")


def _llava_7b(tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    v = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, projection_dim=768)
    t = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    return LlavaConfig(vision_config=v, text_config=t, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def _instructblip_7b(tokenizer: Any) -> Any:
    from transformers import InstructBlipConfig

    vision = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                  image_size=224, patch_size=14, qkv_bias=True)
    qformer = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   encoder_hidden_size=1408, vocab_size=30523)
    text = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32001, max_position_embeddings=2048,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    return InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32,
                              image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _llava_small(tokenizer: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    v = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                         image_size=224, patch_size=16, projection_dim=256)
    t = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=1024,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    return LlavaConfig(vision_config=v, text_config=t, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


CONFIGS = {  # (family, size) -> (config builder, model class); every family also has "tiny"
    ("llava", "small"): (_llava_small, "LlavaForConditionalGeneration"),
    ("llava", "7b"): (_llava_7b, "LlavaForConditionalGeneration"),
    ("instructblip", "7b"): (_instructblip_7b, "InstructBlipForConditionalGeneration"),
}


def build_adapter(family: str, size: str, *, device: str, dtype: torch.dtype, attn: str, seed: int = 0) -> Any:
    """An adapter over a random-init model of ``family`` at ``size``, frozen, on ``device``."""
    import transformers

    from tvprompt.models.registry import get_family
    from tvprompt.models.tiny import tiny_spec, tiny_tokenizer

    cls = get_family(family)
    tokenizer = tiny_tokenizer(family)
    if size == "tiny":
        spec = tiny_spec(family, tokenizer)
        config, model_class, pre = spec.config, spec.model_class, spec.preprocessing
    elif (family, size) in CONFIGS:
        build_config, model_class = CONFIGS[(family, size)]
        config, spec = build_config(tokenizer), None
        pre = cls.default_preprocessing(config)
    else:
        known = ", ".join(f"{f} {s}" for f, s in CONFIGS)
        raise SystemExit(f"--family {family} --size {size} is not defined (known: {known}; any family with --size tiny)")
    config._attn_implementation = attn
    if hasattr(config, "text_config"):
        config.text_config._attn_implementation = attn
    if hasattr(config, "vision_config"):
        config.vision_config._attn_implementation = attn
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = getattr(transformers, model_class)(config)
    finally:
        torch.set_default_dtype(old)
    if spec is not None and spec.init is not None:
        with torch.no_grad():
            spec.init(model)
    adapter = cls(model, tokenizer, pre, model_id=f"random:{family}-{size}", device=torch.device(device))
    # the family's setup hook reads extra files (e.g. a Q-Former tokenizer) from the checkpoint folder
    with tempfile.TemporaryDirectory() as files:
        if spec is not None and spec.save_extra is not None:
            spec.save_extra(Path(files))
        adapter.setup(files)
    return adapter


def build_guide(size: str, *, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-init CLIP guide: ViT-B/32-shaped for ``7b``, a small one otherwise."""
    from transformers import CLIPConfig, CLIPModel

    from tvprompt.models.guide import ClipGuide
    from tvprompt.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    if size == "7b":
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                    vocab_size=max(49408, len(tokenizer)), max_position_embeddings=77)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32)
        proj = 512
    else:
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    vocab_size=len(tokenizer), max_position_embeddings=64)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=224 if size == "small" else 64, patch_size=32)
        proj = 64
    text.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj))
    finally:
        torch.set_default_dtype(old)
    model.requires_grad_(False)
    return ClipGuide(model, tokenizer, ClipGuide.default_preprocessing(model.config), f"random:clip-{size}",
                     torch.device(device))
