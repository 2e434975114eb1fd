"""Prompts on the Hugging Face Hub: resolve ``user/repo`` to a local prompt directory, push one.

Only the prompt's own files are downloaded (``prompt_config.json``, ``prompt.safetensors``,
``preview.png``, ``README.md``) through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` work as for any model. Downloaded files are validated exactly like a local
directory (:meth:`tvprompt.prompt.VisualPrompt.from_pretrained`); nothing is ever unpickled.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from .errors import PromptFileError, TvpError, UsageError

# the files a prompt directory is made of (= prompt.CONFIG_NAME, WEIGHTS_NAME, PREVIEW_NAME, CARD_NAME)
PROMPT_FILES = ("prompt_config.json", "prompt.safetensors", "preview.png", "README.md")
log = logging.getLogger(__name__)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def split_revision(name: str) -> tuple[str, str | None]:
    """``user/repo@rev`` -> (``user/repo``, ``rev``); without ``@``: (name, None)."""
    repo, sep, rev = name.partition("@")
    return (repo, rev) if sep and rev else (name, None)


def looks_like_repo_id(name: str) -> bool:
    """``user/repo`` (optionally ``hf:``-prefixed or ``@revision``-suffixed) that is not a local path."""
    name = name.removeprefix("hf:")
    return bool(_REPO_ID.match(split_revision(name)[0])) and not Path(name).exists()


def hub_error(what: str, error: BaseException, local: str = "the prompt directory") -> str:
    """One line for a Hub failure: what was asked, the cause in a few words, what to do."""
    from huggingface_hub import errors

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if isinstance(error, errors.RepositoryNotFoundError):
        return f"{what}: no such repository on the Hugging Face Hub (or it is private: run `hf auth login`)"
    if isinstance(error, errors.RevisionNotFoundError):
        return f"{what}: no such revision on the Hugging Face Hub"
    if isinstance(error, errors.LocalEntryNotFoundError) or offline:
        hint = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
            "the Hugging Face Hub is unreachable and it is not in the local cache")
        return f"{what}: {hint}; download it once online, or pass {local}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{what}: {first}"


def download_prompt(repo_id: str, revision: str | None = None, token: str | bool | None = None) -> Path:
    """The local snapshot directory of a prompt repo (downloading its prompt files only, cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id = repo_id.removeprefix("hf:")
    if revision is None:
        repo_id, revision = split_revision(repo_id)
    if not _REPO_ID.match(repo_id):
        raise UsageError(f"{repo_id!r} is not a Hub repository id (expected user/name)")
    what = repo_id + (f"@{revision}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(PROMPT_FILES), token=token))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise PromptFileError(hub_error(what, e)) from None
    if not (path / PROMPT_FILES[0]).is_file():
        raise PromptFileError(f"{what}: the repository holds no {PROMPT_FILES[0]}; is it a tvprompt prompt?")
    return path


def resolve_prompt_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local prompt directory as given, else a Hub repo id downloaded to the cache."""
    path = Path(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise UsageError(f"{path}: a local directory has no revision (drop revision=)")
        return path
    if looks_like_repo_id(str(name_or_path)):
        try:
            return download_prompt(str(name_or_path), revision)
        except PromptFileError as e:  # it may have been meant as a local path: say both
            raise PromptFileError(f"{e} (nor is it a local directory)") from None
    return path  # let the loader report the missing directory


def push_prompt(
    prompt: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    transfer: dict[str, Any] | None = None,
) -> str:
    """Save ``prompt`` (a :class:`VisualPrompt`) to a temporary directory and upload it; returns the URL."""
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = repo_id.removeprefix("hf:")
    if not _REPO_ID.match(repo_id):
        raise UsageError(f"{repo_id!r} is not a Hub repository id (expected user/name)")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="tvp-push-") as tmp:
        folder = prompt.save_pretrained(Path(tmp) / "prompt", transfer=transfer)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                commit_message=commit_message or f"Upload visual prompt ({prompt.config.method or 'tvprompt'})",
                allow_patterns=list(PROMPT_FILES),
            )
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise TvpError(hub_error(f"push to {repo_id}", e)) from None
    return str(getattr(info, "commit_url", None) or getattr(url, "url", None) or url)


# other frameworks' weights and single-file exports transformers does not read here: never fetched
_MODEL_IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.gguf", "*.tflite", "*.pt", "*.pth", "*.ckpt", "original/*"]
# pickled PyTorch weights: fetched only when a repo has no safetensors weights
_PICKLED = "*.bin"


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a Hub model repo (configs, tokenizer, code files, safetensors weights).

    ``pytorch_model*.bin`` files are fetched only for a repo without safetensors weights (transformers
    then reads them with ``weights_only``). Offline or unreachable without a cached copy: a one-line
    :class:`TvpError`, no retries."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    what = repo_id + (f"@{revision}" if revision else "")
    try:
        path = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=[*_MODEL_IGNORE, _PICKLED]))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=_MODEL_IGNORE))
            if any(path.glob(_PICKLED)):
                log.warning("%s: no safetensors weights; using its pickled .bin files (loaded weights-only)", what)
        return path
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise TvpError(hub_error(what, e, local="a local model directory")) from None
