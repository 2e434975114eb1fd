"""CLIP-like guides for the TSE loss, behind the :class:`~tvprompt.models.base.Guide` protocol.

- ``hf:<dir or hub id>`` holding a transformers ``CLIPModel`` (model_type ``clip``) or
  ``SiglipModel`` (``siglip``): the default, no extra dependency.
- ``open_clip:<architecture>/<pretrained tag>`` (e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``):
  needs ``pip install 'tvprompt[open_clip]'``. It is an optional extra because open_clip pulls in
  torchvision, which drags a multi-GB CUDA torch onto CPU machines; it is imported only here.

``encode_text`` returns L2-normalised (T, D) embeddings without gradients (callers cache them once
per run); ``encode_image`` maps [0, 1] pixels through the same differentiable preprocessing as the
adapters and returns L2-normalised (B, D) embeddings. ``logit_scale`` is exp(learned scale).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import TvpError
from ..files import atomic_dir
from .compile import check_mode, compile_blocks, eager
from .hf import read_local_or_hub_processor_config, resolve_device, resolve_dtype
from .preprocessing import CLIP_MEAN, CLIP_STD, HALF, ImagePreprocessing
from .registry import register_guide


class FrozenGuide:
    """What every guide holds: the model (frozen, eval mode), its tokenizer and preprocessing."""

    def __init__(self, model: Any, tokenizer: Any, preprocessing: ImagePreprocessing, model_id: str,
                 device: torch.device) -> None:
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.model_id = model_id
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.compile_mode: str | None = None

    def compile(self, mode: str = "default", dynamic: bool | None = True) -> int:
        """Regional ``torch.compile`` of the repeated blocks (``tvprompt.models.compile``) for
        ``encode_image``; ``encode_text`` (run once per run, without gradients) stays eager.
        Returns the number of compiled blocks (0 for ``off``)."""
        check_mode(mode, "compile")
        if mode == "off":
            return 0
        count = compile_blocks(self.model, mode, dynamic=dynamic)
        self.compile_mode = mode
        return count


class HFGuide(FrozenGuide):
    """A transformers dual encoder (CLIP, SigLIP) as a TSE guide; weights frozen, eval mode."""

    model_class: ClassVar[str] = ""
    text_padding: ClassVar[str] = "longest"  # SigLIP was trained on max_length-padded text
    guide_type: ClassVar[str] = ""

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, source: str, *, model_id: str | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype = "auto") -> HFGuide:
        import transformers

        dev, device_map = resolve_device(device)
        if device_map is not None:  # guides are small: one device
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = getattr(transformers, cls.model_class).from_pretrained(source, dtype=resolve_dtype(dtype, dev))
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise TvpError(f"{source}: could not load the guide ({e})") from None
        processor_config = read_local_or_hub_processor_config(source)
        default = cls.default_preprocessing(model.config)
        pre = (default if processor_config is None
               else ImagePreprocessing.from_processor_config(processor_config, default))
        return cls(model.to(dev), tokenizer, pre, model_id or f"hf:{source}", dev)

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        return self.preprocessing(pixels01.to(self.device)).to(self.dtype)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_length = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(texts), padding=self.text_padding, truncation=True, max_length=max_length,
                             return_tensors="pt")
        keep = ("input_ids", "attention_mask") if self.text_padding == "longest" else ("input_ids",)
        return {k: enc[k].to(self.device) for k in keep if k in enc}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise TvpError("encode_text: no texts given")
        with torch.no_grad(), eager(self.compile_mode is not None):
            out = self.model.get_text_features(**self.tokenize(texts))
        return F.normalize(_pooled(out).float(), dim=-1)

    def encode_image(self, pixels01: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self.preprocess(pixels01))
        return F.normalize(_pooled(out).float(), dim=-1)


def _pooled(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_guide("clip")
class ClipGuide(HFGuide):
    model_class = "CLIPModel"

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                                  shortest_edge=size)


@register_guide("siglip")
class SiglipGuide(HFGuide):
    model_class = "SiglipModel"
    text_padding = "max_length"

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=HALF, std=HALF, resample="bicubic")


@register_guide("open_clip")
class OpenClipGuide(FrozenGuide):
    """An open_clip model (optional extra). Model id: ``open_clip:<architecture>/<pretrained tag>``."""

    guide_type: ClassVar[str] = "open_clip"

    @classmethod
    def from_pretrained(cls, spec: str, *, model_id: str | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype = "auto") -> OpenClipGuide:
        try:
            import open_clip
        except ImportError:
            raise TvpError("open_clip guides need the optional extra: pip install 'tvprompt[open_clip]'") from None
        arch, _, tag = spec.partition("/")
        if not arch:
            raise TvpError(f"guide id 'open_clip:{spec}': expected open_clip:<architecture>/<pretrained tag>")
        dev, _ = resolve_device(device if device != "auto" else None)
        model = open_clip.create_model(arch, pretrained=tag or None, device=dev, precision=_precision(dtype, dev))
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        pre = ImagePreprocessing(
            size=size, mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD)),
            resample=cfg.get("interpolation", "bicubic"),
            shortest_edge=min(size) if cfg.get("resize_mode", "shortest") == "shortest" else None,
        )
        return cls(model, open_clip.get_tokenizer(arch), pre, model_id or f"open_clip:{spec}", dev)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad(), eager(self.compile_mode is not None):
            feats = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return F.normalize(feats.float(), dim=-1)

    def encode_image(self, pixels01: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocessing(pixels01.to(self.device)).to(self.dtype)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)


def _precision(dtype: str | torch.dtype, device: torch.device) -> str:
    resolved = resolve_dtype(dtype, device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolved, "fp32")


def build_tiny_guide(guide_type: str, directory: str | os.PathLike, seed: int = 0, image_size: int = 32,
                     hidden: int = 32) -> Path:
    """Write a tiny random ``clip`` or ``siglip`` checkpoint (weights, tokenizer, preprocessor config)."""
    import transformers
    from tokenizers import processors

    from .tiny import build_tokenizer

    if guide_type not in ("clip", "siglip"):
        raise TvpError(f"no tiny guide of type {guide_type!r}; use clip or siglip")
    tokenizer = build_tokenizer()
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    single = f"{bos} $A {eos}" if guide_type == "clip" else f"$A {eos}"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)])
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    if guide_type == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)
        pre = ClipGuide.default_preprocessing(config)
        processor_type, cls_name = "CLIPImageProcessor", "CLIPModel"
    else:
        config = transformers.SiglipConfig(text_config=text, vision_config=vision)
        pre = SiglipGuide.default_preprocessing(config)
        processor_type, cls_name = "SiglipImageProcessor", "SiglipModel"
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = getattr(transformers, cls_name)(config).eval()
    finally:
        torch.random.set_rng_state(state)
    processor = {"image_processor_type": processor_type, **pre.to_processor_config()}
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    return Path(directory)
