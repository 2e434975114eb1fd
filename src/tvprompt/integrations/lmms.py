"""lmms-eval plugin: run any lmms-eval task on a model that sees a tvprompt prompt pasted onto every image.

Registered through the ``lmms_eval.models`` entry-point group as model ``tvprompt``::

    pip install 'tvprompt[lmms]'
    lmms-eval --model tvprompt \\
        --model_args base=llava_hf,prompt=runs/tvp/prompt,pretrained=llava-hf/llava-1.5-7b-hf \\
        --tasks mme --batch_size 1

``base`` names the lmms-eval model that does the work; every other ``model_args`` entry goes to it
unchanged. ``prompt=none`` runs the same wrapper without a prompt (the unprompted baseline: lmms-eval
picks a task's per-model settings by the ``--model`` name, so compare against this rather than
against ``--model <base>``). The wrapper rewrites each request so that the images the base model receives are
``VisualPrompt.apply``-ed (H×W PNG-exact 8-bit images, as ``tvp apply`` writes them). Videos, audio
and other non-image visuals pass through untouched.

lmms-eval 0.7 has two request formats, chosen by the model's ``is_simple``:

* simple: ``(ctx, target | gen_kwargs, doc_to_visual, ..., doc_id, task, split)``: the wrapper
  replaces ``doc_to_visual`` (position 2);
* chat: ``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)``: the wrapper replaces
  ``doc_to_messages`` (position 1) and pastes the prompt onto every ``{"type": "image"}`` item.

Random-patch prompts draw the patch position from a generator seeded by the prompt's seed and the
image's pixels, so an image gets the same prompted image however lmms-eval orders, batches or shards
the requests, and however often the base model asks for the visuals.

This module holds the parts that need no lmms-eval (tested in tvprompt's suite); the model class is
in :mod:`tvprompt.integrations.lmms_model`, which imports lmms-eval and is loaded only by it.
"""

from __future__ import annotations

import copy
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

MODEL_NAME = "tvprompt"
SIMPLE_VISUAL_ARG = 2  # doc_to_visual in simple loglikelihood / generate_until / multi-round requests
CHAT_MESSAGES_ARG = 1  # doc_to_messages in chat generate_until / multi-round requests


def manifest() -> Any:
    """Entry-point payload for lmms-eval's model registry (``lmms_eval.models`` group).

    Both request formats are registered: ``--model tvprompt`` resolves to the chat class, as
    lmms-eval resolves a base model with a chat implementation; ``--force_simple`` to the simple one.
    Either wrapper then follows the format of the base model it actually loaded.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    module = "tvprompt.integrations.lmms_model"
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{module}.PromptedLMM",
                         chat_class_path=f"{module}.PromptedChatLMM")


class PromptPaster:
    """Applies one prompt to PIL images (or image paths), recursively through lists and tuples."""

    def __init__(self, prompt_dir: str | os.PathLike) -> None:
        from ..prompt import VisualPrompt

        self.prompt = VisualPrompt.from_pretrained(prompt_dir)
        self._warned: set[str] = set()

    def generator(self, image: torch.Tensor) -> torch.Generator | None:
        """For random patches, a generator seeded by the prompt's seed and the (3, h, w) 8-bit-exact
        pixels (stable across processes and call orders); None for the shapes that draw nothing."""
        if self.prompt.config.shape != "random_patch":
            return None
        pixels = image.mul(255).round().to(torch.uint8).numpy().tobytes()
        return torch.Generator().manual_seed(zlib.crc32(pixels, self.prompt.config.seed & 0xFFFFFFFF))

    @torch.no_grad()
    def paste(self, image: Any) -> Any:
        """The prompted 8-bit RGB PIL image of a PIL image or image path; lists and tuples element-wise;
        anything else (videos, audio, unreadable paths) unchanged."""
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
        return tensor_to_pil(self.prompt.apply(x[None], generator=self.generator(x))[0])

    __call__ = paste

    def paste_messages(self, messages: Any) -> Any:
        """Copies of lmms-eval chat messages with the prompt pasted onto every ``image`` content item."""
        if not isinstance(messages, list):
            return messages
        out = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                message = {**message, "content": [self._paste_item(c) for c in content]}
            out.append(message)
        return out

    def _paste_item(self, item: Any) -> Any:
        if not isinstance(item, dict) or item.get("type") in (None, "text"):
            return item
        if item["type"] != "image":
            return self._passthrough(item, kind=str(item["type"]))
        key = "url" if "url" in item else "image" if "image" in item else None
        if key is None:
            return self._passthrough(item)
        return {**item, key: self.paste(item[key])}

    def _passthrough(self, visual: Any, kind: str | None = None) -> Any:
        kind = kind or type(visual).__name__
        if kind not in self._warned:
            log.warning("tvprompt: left a non-image visual (%s) unprompted", kind)
            self._warned.add(kind)
        return visual


def wrap_doc_to_visual(doc_to_visual: Callable[..., Any], paster: PromptPaster) -> Callable[..., Any]:
    """``doc_to_visual`` whose images come back prompted."""

    def prompted(doc: Any, *args: Any, **kwargs: Any) -> Any:
        return paster(doc_to_visual(doc, *args, **kwargs))

    prompted.__wrapped__ = doc_to_visual  # type: ignore[attr-defined]
    return prompted


def wrap_doc_to_messages(doc_to_messages: Callable[..., Any], paster: PromptPaster) -> Callable[..., Any]:
    """``doc_to_messages`` whose image items come back prompted.

    Multi-round calls return ``(messages, terminal, previous_output, previous_round_info)``; the
    messages of such a tuple are prompted too (``messages`` is None on the terminal round).
    """

    def prompted(doc: Any, *args: Any, **kwargs: Any) -> Any:
        out = doc_to_messages(doc, *args, **kwargs)
        if isinstance(out, tuple) and out:
            return (paster.paste_messages(out[0]), *out[1:])
        return paster.paste_messages(out)

    prompted.__wrapped__ = doc_to_messages  # type: ignore[attr-defined]
    return prompted


def prompt_requests(requests: Sequence[Any], paster: PromptPaster, chat: bool = False) -> list[Any]:
    """Shallow copies of lmms-eval ``Instance``s whose visuals come back prompted.

    ``chat`` selects the request format (that of a model whose ``is_simple`` is False). Requests
    without a visual callable at the expected position (e.g. the unconditional ``("", choice)``
    requests of ``acc_mutual_info``) are returned as they are.
    """
    position, wrap = (CHAT_MESSAGES_ARG, wrap_doc_to_messages) if chat else (SIMPLE_VISUAL_ARG, wrap_doc_to_visual)
    out = []
    for req in requests:
        args = req.arguments if isinstance(req.arguments, tuple) else (req.arguments,)
        if len(args) > position and callable(args[position]):
            req = copy.copy(req)
            req.arguments = (*args[:position], wrap(args[position], paster), *args[position + 1:])
        out.append(req)
    return out
