"""Model ids -> adapters. ``load_adapter`` and ``load_guide`` are the only ways in.

Model ids:
- ``hf:<hub id or local directory>``, a plain Hub id ``org/name`` (``@revision`` allowed) or a local
  directory: the family comes from ``config.json`` ``model_type``; Hub models are downloaded to the
  huggingface_hub cache first (safetensors only), so an offline miss fails at once in one line;
- ``zoo:<name>``: a model of the shipped mini zoo (``tvprompt.zoo.catalog.resolve(name)`` gives its
  local directory, which is then loaded like ``hf:<dir>``).

Families register with ``@register_family("llava")`` on an :class:`~tvprompt.models.hf.HFAdapter`
subclass in their own module; the modules listed in ``FAMILY_MODULES`` are imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import TvpError, UsageError

log = logging.getLogger(__name__)

# Family modules (tvprompt.models.<families|paper>.<name>), imported lazily by the registry functions.
FAMILY_MODULES = [
    "families.llava", "families.llava_next", "families.blip2", "families.instructblip", "families.qwen2_vl",
    "families.qwen2_5_vl", "families.idefics3", "families.smolvlm", "families.paligemma", "families.gemma3",
    "paper.minigpt4", "paper.bliva", "paper.visualglm",
]
GUIDE_MODULES = ["guide"]
# ``zoo:`` ids resolve through the zoo's catalog, named rather than imported: the zoo's builder trains
# through these adapters, so models must not import the zoo package.
ZOO_CATALOG = "tvprompt.zoo.catalog"

_FAMILIES: dict[str, type] = {}
_GUIDES: dict[str, type] = {}
_loaded = False

T = TypeVar("T", bound=type)


def register_family(name: str) -> Callable[[T], T]:
    """Class decorator: register an adapter class under the family key ``name`` (never ``tvp``)."""
    if name == "tvp":
        raise ValueError("'tvp' is a transformers model_type of an unrelated model; pick another key")

    def wrap(cls: T) -> T:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"family {name!r} is already registered by {_FAMILIES[name].__module__}")
        cls.family = name  # type: ignore[attr-defined]
        _FAMILIES[name] = cls
        return cls

    return wrap


def register_guide(name: str) -> Callable[[T], T]:
    """Class decorator: register a guide class under ``name`` (matched against ``model_type``)."""

    def wrap(cls: T) -> T:
        if name in _GUIDES and _GUIDES[name] is not cls:
            raise ValueError(f"guide {name!r} is already registered by {_GUIDES[name].__module__}")
        cls.guide_type = name  # type: ignore[attr-defined]
        _GUIDES[name] = cls
        return cls

    return wrap


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for name in FAMILY_MODULES + GUIDE_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    _loaded = True


def list_families() -> list[str]:
    """Registered family keys, sorted."""
    _load_modules()
    return sorted(_FAMILIES)


def get_family(name: str) -> type:
    _load_modules()
    if name not in _FAMILIES:
        raise UsageError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def list_guides() -> list[str]:
    _load_modules()
    return sorted(_GUIDES)


def get_guide_class(name: str) -> type:
    _load_modules()
    if name not in _GUIDES:
        raise UsageError(f"unknown guide type {name!r}; known: {', '.join(sorted(_GUIDES))}")
    return _GUIDES[name]


def family_for_model_type(model_type: str) -> type:
    _load_modules()
    for cls in _FAMILIES.values():
        if model_type in cls.model_types:
            return cls
    known = sorted(t for c in _FAMILIES.values() for t in c.model_types)
    raise UsageError(f"model_type {model_type!r} is not supported; supported: {', '.join(known)}")


def resolve_source(model_id: str) -> str:
    """``hf:<x>`` -> x; ``zoo:<name>`` -> its local directory; a local directory or a plain Hub id
    (``org/name``, ``@revision`` allowed) as given. Anything else is a usage error."""
    from ..hub import looks_like_repo_id

    model_id = str(model_id)
    if Path(model_id).is_dir() or (":" not in model_id and looks_like_repo_id(model_id)):
        return model_id
    scheme, sep, rest = model_id.partition(":")
    if not sep or not rest:
        raise UsageError(f"model id {model_id!r}: expected hf:<hub id or local dir>, org/name (a Hub id), "
                         "a local directory or zoo:<name>")
    if scheme == "hf":
        return rest
    if scheme == "zoo":
        if importlib.util.find_spec(ZOO_CATALOG) is None:
            raise TvpError(f"model id {model_id!r}: the mini zoo is not available in this install")
        zoo = importlib.import_module(ZOO_CATALOG)
        return str(zoo.resolve(rest))
    raise UsageError(f"model id {model_id!r}: unknown scheme {scheme!r}; use hf:<hub id or local dir> or zoo:<name>")


def local_source(source: str, revision: str | None = None) -> str:
    """A local directory as given; a Hub id (``org/name[@rev]``) -> its snapshot in the Hub cache, downloaded
    once (safetensors weights only: pickled formats are never fetched). Offline without a cached copy, or with
    the Hub unreachable, this fails at once in one line instead of deep inside transformers."""
    from ..hub import download_model, looks_like_repo_id, split_revision

    if Path(source).exists():
        if revision:
            raise UsageError(f"{source}: a local directory has no revision; drop --revision")
        return source
    if not looks_like_repo_id(source):
        return source  # read_model_type says what is wrong with it
    repo, rev = split_revision(source)
    return str(download_model(repo, rev or revision))


def read_model_type(source: str) -> str:
    """``model_type`` from a local directory's or hub repo's ``config.json``."""
    path = Path(source)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{source}: expected a model directory holding config.json, got a file")
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise TvpError(f"{source}: no config.json in this directory; is it a saved transformers model?")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise TvpError(f"{config_path}: not valid JSON ({e})") from None
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(source).to_dict()
        except (OSError, ValueError) as e:
            raise TvpError(f"{source}: not a local directory and not loadable from the hub ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise TvpError(f"{source}/config.json: missing the 'model_type' field")
    return model_type


def load_adapter(
    model_id: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load an MLLM adapter for ``model_id`` (``org/name``, ``hf:...``, a directory or ``zoo:...``), frozen
    and in eval mode.

    ``device``: None = CUDA when available else CPU; ``"auto"`` = accelerate ``device_map="auto"`` (a model
    too large for one GPU is spread over all of them). ``dtype``: ``auto`` = bf16 on CUDA, fp32 on CPU.
    ``attn_implementation`` falls back to eager. ``revision``: branch, tag or commit of a Hub model
    (``org/name@rev`` works too). ``trust_remote_code``: allow families that run the checkpoint's own code.
    """
    source = local_source(resolve_source(model_id), revision)
    cls = family_for_model_type(read_model_type(source))
    log.info("loading %s as family %s", model_id, cls.family)
    extra = {"trust_remote_code": True} if trust_remote_code and getattr(cls, "remote_code", False) else {}
    with quiet_weight_loading():
        return cls.from_pretrained(
            source, model_id=model_id, device=device, dtype=dtype,
            attn_implementation=attn_implementation, gradient_checkpointing=gradient_checkpointing, **extra,
        )


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """No transformers "Loading weights" bars while a model loads (a log line says what is loading);
    downloads happen before, in :func:`local_source`, with their own bars."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_guide(
    model_id: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    *,
    revision: str | None = None,
) -> Any:
    """Load a CLIP-like guide for the TSE loss (``org/name``, ``hf:...``, ``zoo:...`` or ``open_clip:<arch>/<tag>``)."""
    scheme, _, rest = str(model_id).partition(":")
    if scheme == "open_clip":
        return get_guide_class("open_clip").from_pretrained(rest, model_id=model_id, device=device, dtype=dtype)
    source = local_source(resolve_source(model_id), revision)
    model_type = read_model_type(source)
    with quiet_weight_loading():
        return get_guide_class(model_type).from_pretrained(source, model_id=model_id, device=device, dtype=dtype)
