"""tvprompt: transferable visual prompts for multimodal LLMs."""

__version__ = "0.1.0"

from .errors import ImageError, PromptFileError, TvpError, UsageError  # noqa: E402
from .prompt import PromptConfig, VisualPrompt  # noqa: E402

__all__ = [
    "ImageError",
    "PromptConfig",
    "PromptFileError",
    "TvpError",
    "UsageError",
    "VisualPrompt",
    "__version__",
]
