"""The lmms-eval model class behind ``--model tvprompt`` (imports lmms-eval; loaded only by lmms-eval).

See :mod:`tvprompt.integrations.lmms` for usage.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.models import get_model

from ..errors import UsageError
from .lmms import PromptPaster, prompt_requests


class PromptedLMM(lmms):
    """Delegates every request to the ``base`` lmms-eval model with the prompt pasted onto the images."""

    def __init__(self, base: str | None = None, prompt: str | None = None, **base_args: Any) -> None:
        super().__init__()
        if not base or not prompt:
            raise UsageError("--model tvprompt needs model_args base=<lmms-eval model>,prompt=<prompt dir>,...")
        self.paster = PromptPaster(prompt)
        self.inner = get_model(base)(**base_args)
        self.task_dict = self.inner.task_dict  # lmms-eval fills this dict in place; share it
        self._rank = getattr(self.inner, "rank", 0)
        self._world_size = getattr(self.inner, "world_size", 1)

    @property
    def accelerator(self) -> Any:
        return getattr(self.inner, "accelerator", None)

    def set_cache_hook(self, cache_hook: Any) -> None:
        super().set_cache_hook(cache_hook)
        self.inner.set_cache_hook(cache_hook)

    def loglikelihood(self, requests: list) -> list:
        return self.inner.loglikelihood(prompt_requests(requests, self.paster))

    def generate_until(self, requests: list) -> list:
        return self.inner.generate_until(prompt_requests(requests, self.paster))

    def generate_until_multi_round(self, requests: list) -> list:
        return self.inner.generate_until_multi_round(prompt_requests(requests, self.paster))
