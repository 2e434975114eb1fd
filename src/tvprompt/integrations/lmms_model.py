"""The lmms-eval model classes behind ``--model tvprompt`` (import lmms-eval; loaded only by lmms-eval).

See :mod:`tvprompt.integrations.lmms` for usage. lmms-eval resolves ``tvprompt`` to
:class:`PromptedChatLMM` by default and to :class:`PromptedLMM` with ``--force_simple``; the base
model is resolved the same way (``get_model(base, force_simple=...)``). The wrapper then takes the
request format of the base model it got (``is_simple`` on the instance, which is what lmms-eval reads
to build the task requests), so a base model with only one implementation works either way.

lmms-eval looks up a task's per-model settings (``lmms_eval_specific_kwargs``,
``model_specific_generation_kwargs``) under the ``--model`` name, here ``tvprompt``, so their
``default`` entries apply. ``prompt=none`` gives the unprompted baseline under the same settings.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.models import get_model

from ..errors import UsageError
from .lmms import PromptPaster, prompt_requests


class PromptedLMM(lmms):
    """Delegates every request to the ``base`` lmms-eval model with the prompt pasted onto the images."""

    is_simple: bool = True

    def __init__(self, base: str | None = None, prompt: str | None = None, **base_args: Any) -> None:
        super().__init__()
        if not base or not prompt:
            raise UsageError("--model tvprompt needs model_args base=<lmms-eval model>,prompt=<prompt dir>,...")
        if base == "tvprompt":
            raise UsageError("--model tvprompt: base=tvprompt would wrap itself; name the model that does the work")
        # prompt=none: the same wrapper without a prompt, the unprompted baseline under identical task text
        self.paster = None if prompt.lower() == "none" else PromptPaster(prompt)
        self.inner = get_model(base, force_simple=type(self).is_simple)(**base_args)
        self.is_simple = bool(getattr(self.inner, "is_simple", True))  # lmms-eval builds requests for the inner
        self.task_dict = self.inner.task_dict  # lmms-eval fills this dict in place; share it
        self._rank = getattr(self.inner, "rank", 0)
        self._world_size = getattr(self.inner, "world_size", 1)
        if getattr(self.inner, "accelerator", None) is not None:
            self.accelerator = self.inner.accelerator  # else lmms-eval sets its own, as for any model
        if hasattr(self.inner, "chat_template"):
            self.chat_template = self.inner.chat_template

    @property
    def device(self) -> Any:
        return getattr(self.inner, "device", None)

    def set_cache_hook(self, cache_hook: Any) -> None:
        super().set_cache_hook(cache_hook)
        self.inner.set_cache_hook(cache_hook)

    def _prompted(self, requests: list) -> list:
        if self.paster is None:
            return list(requests)
        return prompt_requests(requests, self.paster, chat=not self.is_simple)

    def loglikelihood(self, requests: list) -> list:
        return self.inner.loglikelihood(self._prompted(requests))

    def generate_until(self, requests: list) -> list:
        return self.inner.generate_until(self._prompted(requests))

    def generate_until_multi_round(self, requests: list) -> list:
        return self.inner.generate_until_multi_round(self._prompted(requests))

    def generate_visual_cot(self, requests: list) -> list:
        return self.inner.generate_visual_cot(self._prompted(requests))

    def apply_chat_template(self, chat_history: list) -> Any:
        return self.inner.apply_chat_template(chat_history)

    def clean(self) -> None:
        self.inner.clean()


class PromptedChatLMM(PromptedLMM):
    """The chat-format registration of :class:`PromptedLMM` (what ``--model tvprompt`` resolves to)."""

    is_simple: bool = False
