"""tvprompt: transferable visual prompts for multimodal LLMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import ImageError, PromptFileError, TvpError, UsageError  # noqa: E402

if TYPE_CHECKING:
    from .prompt import PromptConfig, VisualPrompt

# Imported on first use, so that `import tvprompt` (and `tvp --help`, and every user error the
# CLI reports before it needs a model) does not pay for importing torch.
_LAZY = {"PromptConfig": ".prompt", "VisualPrompt": ".prompt"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ImageError",
    "PromptConfig",
    "PromptFileError",
    "TvpError",
    "UsageError",
    "VisualPrompt",
    "__version__",
]
