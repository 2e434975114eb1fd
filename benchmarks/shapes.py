"""Model shapes for benchmarks, built from configs with random weights.

Random-init weights cost exactly what pretrained ones cost, so speed measured on them holds for
the real checkpoints. ``tiny`` uses the test builders (seconds on a CPU), ``small`` a CPU-sized
LLaVA with a 224-px ViT (196 patches) for ratios; the other sizes are released architectures
(``CONFIGS``: LLaVA-1.5-7B, InstructBLIP-Vicuna-7B, MiniGPT-4-7B, Qwen2-VL-2B, Qwen2.5-VL-3B,
SmolVLM-256M, PaliGemma-3B, Gemma-3-4B), GPU only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch


def _llama(tokenizer: Any, hidden: int, intermediate: int, layers: int, heads: int, vocab: int,
           max_positions: int, **extra: Any) -> dict[str, Any]:
    return dict(model_type="llama", hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)


LLAMA2_7B = dict(hidden=4096, intermediate=11008, layers=32, heads=32)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768)
EVA_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
             image_size=224, patch_size=14, qkv_bias=True)
BERT_QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
SIGLIP_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                     num_hidden_layers=27, num_attention_heads=16, patch_size=14)
QWEN_TEXT = dict(vocab_size=151936, max_position_embeddings=32768, pad_token_id=0,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})


def _llava(tokenizer: Any, vision: dict[str, Any], text: dict[str, Any]) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision), text_config=text,
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def _llava_7b(tokenizer: Any) -> Any:  # LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B
    return _llava(tokenizer, CLIP_L_336, _llama(tokenizer, **LLAMA2_7B, vocab=32064, max_positions=4096))


def _llava_1b(tokenizer: Any) -> Any:  # CLIP ViT-L/14-336 + a 1B Llama (hidden 2048, 16 layers)
    return _llava(tokenizer, CLIP_L_336, _llama(tokenizer, 2048, 5504, 16, 16, vocab=32064, max_positions=2048))


def _llava_small(tokenizer: Any) -> Any:  # CPU-sized: 224 px / patch 16 (196 patches), 4 + 4 layers, width 256
    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  image_size=224, patch_size=16, projection_dim=256)
    return _llava(tokenizer, vision, _llama(tokenizer, 256, 1024, 4, 4, vocab=len(tokenizer), max_positions=1024))


def _instructblip_7b(tokenizer: Any) -> Any:  # InstructBLIP-Vicuna-7B: EVA ViT-g/14 + 32-query Q-Former + Vicuna-7B
    from transformers import InstructBlipConfig

    return InstructBlipConfig(vision_config=EVA_G, qformer_config=dict(BERT_QFORMER, encoder_hidden_size=1408,
                                                                       vocab_size=30523),
                              text_config=_llama(tokenizer, **LLAMA2_7B, vocab=32001, max_positions=2048),
                              num_query_tokens=32, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _minigpt4_7b(tokenizer: Any) -> Any:  # MiniGPT-4 (Vicuna-7B): EVA ViT-g/14 + 32-query Q-Former + LLaMA-7B
    from tvprompt.models.paper.arch import MiniGPT4Config

    return MiniGPT4Config(vision_config=dict(EVA_G, qkv_bias=True, initializer_range=0.02), qformer_config=BERT_QFORMER,
                          text_config=_llama(tokenizer, **LLAMA2_7B, vocab=32000, max_positions=2048),
                          num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<unk>"))


def _qwen2_vl_2b(tokenizer: Any) -> Any:
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config=dict(QWEN_TEXT, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)


def _qwen2_5_vl_3b(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(QWEN_TEXT, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)


def _smolvlm_256m(tokenizer: Any) -> Any:
    from transformers import SmolVLMConfig

    return SmolVLMConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, pad_token_id=0,
                         max_position_embeddings=8192),
        scale_factor=4, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _paligemma_3b(tokenizer: Any) -> Any:  # PaliGemma-3B-224
    from transformers import PaliGemmaConfig

    return PaliGemmaConfig(
        vision_config=dict(SIGLIP_SO400M, image_size=224, projection_dim=2048),
        text_config=dict(model_type="gemma", vocab_size=257216, hidden_size=2048, intermediate_size=16384,
                         num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                         pad_token_id=0),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projection_dim=2048, hidden_size=2048,
        vocab_size=257216)


def _gemma3_4b(tokenizer: Any) -> Any:
    from transformers import Gemma3Config

    ids = tokenizer.convert_tokens_to_ids
    return Gemma3Config(
        vision_config=dict(SIGLIP_SO400M, image_size=896),
        text_config=dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024,
                         query_pre_attn_scalar=256, pad_token_id=0),
        mm_tokens_per_image=256, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"))


# (family, size) -> config builder; the model class is the family's. Every family also has "tiny"
# (its test builder). The real shapes are the released checkpoints' architectures.
CONFIGS = {
    ("llava", "small"): _llava_small,
    ("llava", "1b"): _llava_1b,
    ("llava", "7b"): _llava_7b,
    ("instructblip", "7b"): _instructblip_7b,
    ("minigpt4", "7b"): _minigpt4_7b,
    ("qwen2_vl", "2b"): _qwen2_vl_2b,
    ("qwen2_5_vl", "3b"): _qwen2_5_vl_3b,
    ("smolvlm", "256m"): _smolvlm_256m,
    ("paligemma", "3b"): _paligemma_3b,
    ("gemma3", "4b"): _gemma3_4b,
}
SIZES = ("tiny", *dict.fromkeys(size for _, size in CONFIGS))


def narrow(config: Any, vocab: int) -> Any:
    """The same depth with every width shrunk (hidden 16, one head, a 28-px image, the tokenizer's own
    ``vocab``): the arithmetic all but vanishes and a step costs what the host spends on it (Python,
    dispatch, autograd, one call per kernel), the fixed per-step cost that dominates a GPU step at
    small batch."""
    for name in ("vision_config", "qformer_config", "text_config"):
        sub = getattr(config, name, None)
        if sub is None:
            continue
        for key, value in dict(hidden_size=16, intermediate_size=32, num_attention_heads=1, num_key_value_heads=1,
                               encoder_hidden_size=16, projection_dim=16, head_dim=16).items():
            if getattr(sub, key, None) is not None:
                setattr(sub, key, value)
        if getattr(sub, "image_size", None) is not None:
            sub.image_size = 2 * sub.patch_size
        if getattr(sub, "vocab_size", None) is not None:
            sub.vocab_size = vocab
    return config


def build_model(family: str, size: str, *, device: str, dtype: torch.dtype, attn: str = "sdpa",
                seed: int = 0, narrowed: bool = False) -> tuple[Any, Any, Any, Any]:
    """(model, tokenizer, preprocessing, tiny spec or None): a random-init ``family`` model at ``size``
    (``narrowed``: at its depth but tiny widths, see :func:`narrow`)."""
    from tvprompt.models.hf import resolve_model_class
    from tvprompt.models.registry import get_family
    from tvprompt.models.tiny import tiny_spec, tiny_tokenizer

    cls = get_family(family)
    tokenizer = tiny_tokenizer(family)
    if size == "tiny":
        spec = tiny_spec(family, tokenizer)
        config, pre = spec.config, spec.preprocessing
    elif (family, size) in CONFIGS:
        config, spec = CONFIGS[(family, size)](tokenizer), None
        if narrowed:
            config = narrow(config, len(tokenizer))
        pre = cls.default_preprocessing(config)
    else:
        known = ", ".join(f"{f} {s}" for f, s in CONFIGS)
        raise SystemExit(f"--family {family} --size {size} is not defined (known: {known}; any family with --size "
                         "tiny)")
    for sub in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if sub is not None:
            sub._attn_implementation = attn
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = resolve_model_class(cls.model_class)(config)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        if spec is not None and spec.init is not None:
            spec.init(model)
        proj = getattr(getattr(model, "model", model), "multi_modal_projector", None)
        if proj is not None and hasattr(proj, "mm_input_projection_weight"):  # Gemma 3's starts at zeros
            torch.nn.init.normal_(proj.mm_input_projection_weight, std=0.02)
    model.requires_grad_(False)
    return model.eval(), tokenizer, pre, spec


def build_adapter(family: str, size: str, *, device: str, dtype: torch.dtype, attn: str = "sdpa",
                  seed: int = 0, narrowed: bool = False) -> Any:
    """An adapter over a random-init model of ``family`` at ``size``, frozen, on ``device``."""
    from tvprompt.models.registry import get_family

    model, tokenizer, pre, spec = build_model(family, size, device=device, dtype=dtype, attn=attn, seed=seed,
                                              narrowed=narrowed)
    adapter = get_family(family)(model, tokenizer, pre, model_id=f"random:{family}-{size}", device=torch.device(device))
    # the family's setup hook reads extra files (e.g. a Q-Former tokenizer) from the checkpoint folder
    with tempfile.TemporaryDirectory() as files:
        if spec is not None and spec.save_extra is not None:
            spec.save_extra(Path(files))
        adapter.setup(files)
    return adapter


def build_guide(size: str, *, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-init CLIP guide: ViT-B/32-shaped next to the real shapes, a small one for tiny and small."""
    from transformers import CLIPConfig, CLIPModel

    from tvprompt.models.guide import ClipGuide
    from tvprompt.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    if size not in ("tiny", "small"):
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
