"""Idefics3 (``Idefics3ForConditionalGeneration``), without image splitting.

Idefics3's processor by default splits a large image into ``max_image_size`` tiles plus a
downscaled global view. A visual prompt is one small canvas, so the adapter uses **no image
splitting**: the prompted image is resized to one square ``image_size`` view (the vision config's
``image_size``, 364 for Idefics3-8B, 512 for SmolVLM) — what the processor produces with
``do_image_splitting=False``. The vision input is 5-D ``(B, 1, 3, S, S)`` with an all-ones
``pixel_attention_mask``.

The processor resizes twice with PIL Lanczos (longest edge to ``size.longest_edge``, then to the
square view); torch has no Lanczos kernel, so the adapter builds PIL's Lanczos weights as matrices
(:mod:`tvprompt.models.pil_resample`) and applies both resizes as one matmul per axis. What remains
is PIL's uint8 rounding (and clipping) between passes.

Prompt format (the Idefics3 chat template; the image expands as the processor expands it)::

    <bos>User:<fake_token_around_image><global-img><image>×N<fake_token_around_image>{prompt}<end_of_utterance>
    \\nAssistant: {answer}<end_of_utterance>

(one line, wrapped here at the ``\\n``)

Features: ``encoder`` = the SigLIP-style vision tower output ``(B, (S/patch)², D)``; ``projected`` =
the pixel-shuffle connector output the LLM sees ``(B, N, D_text)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...errors import TvpError
from ..chat import turn_end_id
from ..hf import HFAdapter, TextBatch, capture_io, read_local_or_hub_processor_config
from ..pil_resample import pil_resize
from ..preprocessing import HALF, ImagePreprocessing
from ..registry import register_family
from ..tiny import TinySpec, register_tiny
from ..tiny_parts import sharpen_lm_head

log = logging.getLogger(__name__)

IDEFICS3_SPECIAL_TOKENS = {
    "image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@register_family("idefics3")
class Idefics3Adapter(HFAdapter):
    model_types = ("idefics3",)
    model_class = "Idefics3ForConditionalGeneration"
    display_name = "Idefics3"
    llm = "Llama 3"
    notes = "no image splitting (one square view), 'User:<image>{prompt}<end_of_utterance>\\nAssistant:'"

    @classmethod
    def default_preprocessing(cls, config: Any) -> ImagePreprocessing:
        size = int(config.vision_config.image_size)
        return ImagePreprocessing(size=(size, size), mean=HALF, std=HALF, resample="bicubic")

    def setup(self, source: str) -> None:
        # The view size is fixed by the vision tower (the number of image tokens depends on it); the
        # processor config gives mean/std and the first resize's longest edge.
        processor = read_local_or_hub_processor_config(source) or {}
        default = self.default_preprocessing(self.model.config)
        self.preprocessing = ImagePreprocessing(
            size=default.size, mean=tuple(processor.get("image_mean") or default.mean),  # type: ignore[arg-type]
            std=tuple(processor.get("image_std") or default.std), resample="bicubic",  # type: ignore[arg-type]
        )
        view = processor.get("max_image_size") if isinstance(processor.get("max_image_size"), dict) else {}
        if view.get("longest_edge") not in (None, default.size[0]):
            log.warning("%s: max_image_size %s differs from the vision tower's image_size %d; using %d",
                        source, view["longest_edge"], default.size[0], default.size[0])
        size = processor.get("size") if isinstance(processor.get("size"), dict) else {}
        resize = processor.get("do_resize", True) and "longest_edge" in size
        self.first_longest_edge: int | None = int(size["longest_edge"]) if resize else None
        if not processor:
            self.first_longest_edge = 4 * default.size[0]

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[0,1] (B,3,H,W) -> (B,3,S,S) normalised; PIL's two Lanczos resizes as one matrix per axis."""
        if pixels01.ndim != 4 or pixels01.shape[1] != 3:
            raise TvpError(f"pixels: expected a (B, 3, H, W) tensor, got shape {tuple(pixels01.shape)}")
        h, w = pixels01.shape[-2:]
        side = self.preprocessing.size[0]
        heights, widths = (h, side), (w, side)
        if self.first_longest_edge is not None:
            mh, mw = first_resize_size(h, w, self.first_longest_edge)
            heights, widths = (h, mh, side), (w, mw, side)
        x = pil_resize(pixels01.to(self.device).float(), heights, widths, "lanczos")
        return self.preprocessing.normalize(x).to(self.dtype)

    @property
    def end_id(self) -> int:
        return turn_end_id(self.tokenizer, "<end_of_utterance>")

    def num_image_tokens(self) -> int:
        cfg = self.model.config
        side = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
        return side * side // int(cfg.scale_factor) ** 2

    def prompt_ids(self, prompt: str, image_size: tuple[int, int]) -> list[int]:
        return (self.bos() + self.text_ids("User:<fake_token_around_image><global-img>")
                + [self.image_token_id] * self.num_image_tokens()
                + self.text_ids(f"<fake_token_around_image>{prompt}<end_of_utterance>\nAssistant:"))

    def forward_kwargs(self, pixel_values: torch.Tensor | None, batch: TextBatch) -> dict[str, Any]:
        if pixel_values is None:
            return {}
        return {"pixel_values": pixel_values.unsqueeze(1), "pixel_attention_mask": self._pixel_mask(pixel_values)}

    @staticmethod
    def _pixel_mask(pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        return torch.ones(b, 1, h, w, dtype=torch.bool, device=pixel_values.device)

    # The connector's input is the ``encoder`` feature, its output the ``projected`` one (hooks).
    def capture_vision(self, batch: TextBatch) -> Any:
        return capture_io(self.model.model.connector, batch.input_ids.shape[0])

    def run_vision(self, pixel_values: torch.Tensor, image_size: tuple[int, int]) -> Any:
        with capture_io(self.model.model.connector, pixel_values.shape[0]) as box:
            self.model.model.get_image_features(pixel_values.unsqueeze(1), self._pixel_mask(pixel_values))
        return box

    def select_features(self, image_outputs: Any, kind: str) -> torch.Tensor:
        feats = image_outputs.input if kind == "encoder" else image_outputs.output
        return feats.reshape(image_outputs.batch_size, -1, feats.shape[-1])


def first_resize_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The processor's first resize: longest edge to ``longest_edge``, aspect kept, short side even."""
    if width >= height:
        h, w = int(longest_edge / (width / height)), longest_edge
        h += h % 2
    else:
        h, w = longest_edge, int(longest_edge * (width / height))
        w += w % 2
    return max(h, 1), max(w, 1)


def tiny_idefics3_config(config_cls: Any, tokenizer: Any, image_size: int, patch_size: int, hidden: int) -> Any:
    from transformers import LlamaConfig

    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    return config_cls(vision_config=vision, text_config=text.to_dict(), scale_factor=2,
                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id)


def tiny_idefics3_processor(image_size: int) -> dict[str, Any]:
    # As the released processors: longest edge to 4 views first, then the view; Lanczos (1).
    return {"size": {"longest_edge": 4 * image_size}, "max_image_size": {"longest_edge": image_size},
            "do_image_splitting": False, "do_pad": True, "resample": 1}


@register_tiny("idefics3", special_tokens=IDEFICS3_SPECIAL_TOKENS)
def tiny_idefics3(tokenizer: Any, image_size: int = 32, patch_size: int = 8, hidden: int = 32) -> TinySpec:
    from transformers import Idefics3Config

    config = tiny_idefics3_config(Idefics3Config, tokenizer, image_size, patch_size, hidden)
    pre = ImagePreprocessing(size=(image_size, image_size), mean=HALF, std=HALF, resample="bicubic")
    return TinySpec(config, "Idefics3ForConditionalGeneration", pre, "Idefics3ImageProcessor",
                    processor_extra=tiny_idefics3_processor(image_size), init=sharpen_lm_head)
