"""tvprompt: transferable visual prompts for multimodal LLMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import ImageError, PromptFileError, TvpError, UsageError  # noqa: E402

if TYPE_CHECKING:
    from .data import open_dataset
    from .evaluation.evaluate import EvalSetup, evaluate
    from .models.registry import load_adapter, load_guide
    from .prompt import PromptConfig, VisualPrompt
    from .tasks import load_task
    from .training.config import TrainConfig, resolve_config
    from .training.loop import train

# Imported on first use, so that `import tvprompt` (and `tvp --help`, and every user error the
# CLI reports before it needs a model) does not pay for importing torch.
_LAZY = {
    "PromptConfig": ".prompt",
    "VisualPrompt": ".prompt",
    "TrainConfig": ".training.config",
    "resolve_config": ".training.config",
    "train": ".training.loop",
    "EvalSetup": ".evaluation.evaluate",
    "evaluate": ".evaluation.evaluate",
    "load_adapter": ".models.registry",
    "load_guide": ".models.registry",
    "load_task": ".tasks",
    "open_dataset": ".data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EvalSetup",
    "ImageError",
    "PromptConfig",
    "PromptFileError",
    "TrainConfig",
    "TvpError",
    "UsageError",
    "VisualPrompt",
    "__version__",
    "evaluate",
    "load_adapter",
    "load_guide",
    "load_task",
    "open_dataset",
    "resolve_config",
    "train",
]
