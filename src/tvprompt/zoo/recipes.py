"""Recipes of the mini zoo: which architecture, how big, which seed, how long to train.

Every member is a tiny model of a real transformers architecture, built with the family's tiny
builder (:mod:`tvprompt.models.tiny`) and enlarged where learning needs it. They differ in vision
encoder, patch size, width and seed, so that transfer between them is a real question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """One zoo MLLM. ``overrides`` go to the family's tiny builder; ``edits`` set config fields
    afterwards (dotted paths, e.g. ``text_config.num_hidden_layers``)."""

    name: str
    family: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)
    edits: dict[str, Any] = field(default_factory=dict)
    vision_steps: int = 300  # stage 1: vision tower + auxiliary heads on dense labels
    lm_steps: int = 500  # stage 2: the whole model on the LM loss (+ auxiliary heads)
    vision_batch_size: int = 64
    shape_share: float = 0.5  # share of each stage-1 batch drawn from the shape task
    exist_share: float = 0.35  # share of each stage-2 batch drawn from the existence task
    stage2_aux: str = "encoder"  # features the stage-2 auxiliary head reads: encoder | projected
    # Half of the training images are shrunk inside a black border of random width up to this share
    # of the side (TVP's padded layout and smaller objects: real MLLMs see every scale in pretraining).
    max_border: float = 0.3
    batch_size: int = 32
    lr: float = 2e-3
    description: str = ""


@dataclass(frozen=True)
class GuideRecipe:
    name: str = "clip-guide"
    seed: int = 100
    image_size: int = 48
    patch_size: int = 8
    hidden: int = 96
    layers: int = 2
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    max_border: float = 0.18


def _layers(vision: int = 2, text: int = 2, heads: int = 4) -> dict[str, Any]:
    return {
        "vision_config.num_hidden_layers": vision,
        "vision_config.num_attention_heads": heads,
        "text_config.num_hidden_layers": text,
        "text_config.num_attention_heads": heads,
    }


_LLAMA_KV = {"text_config.num_key_value_heads": 4}
_QFORMER = {"qformer_config.num_hidden_layers": 2, "qformer_config.num_attention_heads": 4}

# Every vision tower has a 12×12 patch grid, so the 30 px border of a 224 px prompt covers
# 30/224 · 12 = 1.6 whole patches per side (zoo/geometry.py), like the real MLLMs the paper uses
# (ViT-g/14 at 224 px: 2.1; ViT-L/14 at 336 px: 3.2). Inputs of 72–96 px rather than 48 keep a
# shrunk downstream object several pixels wide per patch (at 48 px / patch 4 the padded layout
# alone cost 12 points of shape accuracy). The members differ in family, input size, patch size
# and seed, so transfer between them is a real question.
RECIPES: list[Recipe] = [
    Recipe(
        name="llava-p8", family="llava", seed=1,
        overrides={"image_size": 96, "patch_size": 8, "hidden": 96},
        edits={**_layers(), **_LLAMA_KV, "vision_feature_layer": -1}, lm_steps=1000, exist_share=0.5,
        description="LLaVA-1.5 architecture: CLIP ViT (96 px, patch 8, 12x12 tokens) + MLP projector + Llama",
    ),
    Recipe(
        name="blip2-opt", family="blip2", seed=2,
        overrides={"image_size": 96, "patch_size": 8, "hidden": 96, "num_query_tokens": 16, "llm": "opt"},
        edits={**_layers(), **_QFORMER}, vision_steps=500, lm_steps=1500, exist_share=0.6, stage2_aux="projected",
        max_border=0.18,  # with 0.3 its Q-Former passed shape on no better than chance (24 % pretraining)
        description="BLIP-2 architecture: BLIP ViT (96 px, patch 8, 12x12 tokens) + Q-Former (16 queries) + OPT",
    ),
    Recipe(
        name="instructblip-p7", family="instructblip", seed=3,
        overrides={"image_size": 84, "patch_size": 7, "hidden": 96, "num_query_tokens": 16, "llm": "llama"},
        edits={**_layers(), **_QFORMER, **_LLAMA_KV}, vision_steps=1000, lm_steps=1500, exist_share=0.6,
        stage2_aux="projected",  # stage 1 at 500 steps left shape at 40 % in pretraining, 18 % downstream
        description="InstructBLIP architecture: BLIP ViT (84 px, patch 7, 12x12 tokens) + instruction-aware Q-Former + "
                    "Llama",
    ),
    Recipe(
        name="llava-next-p6", family="llava_next", seed=4,
        overrides={"image_size": 72, "patch_size": 6, "hidden": 96, "pinpoints": [[72, 72]]},
        edits={**_layers(), **_LLAMA_KV, "vision_feature_layer": -1}, lm_steps=800, exist_share=0.6,
        description="LLaVA-NeXT architecture: CLIP ViT (72 px, patch 6, 12x12 tokens) + one any-res tile + MLP "
                    "projector + Llama",
    ),
]

GUIDE = GuideRecipe()


def recipe_names() -> list[str]:
    """The shipped members (what `tvp zoo build` builds by default)."""
    return [r.name for r in RECIPES]
