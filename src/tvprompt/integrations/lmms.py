"""lmms-eval plugin: run any lmms-eval task on a model that sees a tvprompt prompt pasted onto every image.

Registered through the ``lmms_eval.models`` entry-point group as model ``tvprompt``::

    pip install 'tvprompt[lmms]'
    lmms-eval --model tvprompt \\
        --model_args base=llava_hf,prompt=runs/tvp/prompt,pretrained=llava-hf/llava-1.5-7b-hf \\
        --tasks mme --batch_size 1

``base`` names the lmms-eval model that does the work; every other ``model_args`` entry goes to it
unchanged. The wrapper replaces each request's ``doc_to_visual`` so that the images the base model
receives are ``VisualPrompt.apply``-ed (H×W PNG-exact 8-bit images, as ``tvp apply`` writes them).
Videos, audio and other non-image visuals pass through untouched.

This module holds the parts that need no lmms-eval (tested in tvprompt's suite); the model class is
in :mod:`tvprompt.integrations.lmms_model`, which imports lmms-eval and is loaded only by it.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

MODEL_NAME = "tvprompt"
DOC_TO_VISUAL = 2  # position of doc_to_visual in loglikelihood and generate_until request args


def manifest() -> Any:
    """Entry-point payload for lmms-eval's model registry (``lmms_eval.models`` group)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path="tvprompt.integrations.lmms_model.PromptedLMM")


class PromptPaster:
    """Applies one prompt to PIL images (or image paths), recursively through lists and tuples."""

    def __init__(self, prompt_dir: str | os.PathLike) -> None:
        from ..prompt import VisualPrompt

        self.prompt = VisualPrompt.from_pretrained(prompt_dir)
        self.generator = torch.Generator().manual_seed(self.prompt.config.seed)
        self._warned = False

    @torch.no_grad()
    def paste(self, image: Any) -> Any:
        from PIL import Image

        from ..imageio import load_image, pil_to_tensor, tensor_to_pil, to_rgb

        if isinstance(image, Image.Image):
            x = pil_to_tensor(to_rgb(image))
        elif isinstance(image, str | os.PathLike) and os.path.isfile(image):
            try:
                x = load_image(image)
            except Exception:  # a video or audio path: not ours to touch
                return self._passthrough(image)
        elif isinstance(image, list | tuple):
            return type(image)(self.paste(v) for v in image)
        else:
            return self._passthrough(image)
        return tensor_to_pil(self.prompt.apply(x[None], generator=self.generator)[0])

    __call__ = paste

    def _passthrough(self, visual: Any) -> Any:
        if not self._warned:
            log.warning("tvprompt: left a non-image visual (%s) unprompted", type(visual).__name__)
            self._warned = True
        return visual


def wrap_doc_to_visual(doc_to_visual: Callable[[Any], Any], paster: PromptPaster) -> Callable[[Any], Any]:
    def prompted(doc: Any) -> Any:
        return paster(doc_to_visual(doc))

    prompted.__wrapped__ = doc_to_visual  # type: ignore[attr-defined]
    return prompted


def prompt_requests(requests: Sequence[Any], paster: PromptPaster) -> list[Any]:
    """Shallow copies of lmms-eval ``Instance``s whose ``doc_to_visual`` pastes the prompt."""
    out = []
    for req in requests:
        args = req.arguments if isinstance(req.arguments, tuple) else (req.arguments,)
        if len(args) > DOC_TO_VISUAL and callable(args[DOC_TO_VISUAL]):
            req = copy.copy(req)
            req.arguments = (*args[:DOC_TO_VISUAL], wrap_doc_to_visual(args[DOC_TO_VISUAL], paster),
                             *args[DOC_TO_VISUAL + 1:])
        out.append(req)
    return out
