"""The visual prompt: one learnable pixel tensor and the shape that places it on an image.

Pixel space is float [0, 1], (B, 3, H, W). The default shape is TVP's padding prompt (Eq. 2):

    T_p(X, δ) = pad_p(resize_{H-2p}(X)) + M_p ⊙ δ

A prompt directory holds ``prompt_config.json`` (a :class:`PromptConfig`) and ``prompt.safetensors``
(float32 δ under the key ``delta``), plus a ``preview.png`` and a ``README.md`` card for people.
Nothing in it is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import PromptFileError, TvpError, UsageError
from .files import atomic_dir
from .imagefit import FITS, RESAMPLES, fit_images

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "prompt_config.json"
WEIGHTS_NAME = "prompt.safetensors"
PREVIEW_NAME = "preview.png"
CARD_NAME = "README.md"
SHAPES = ("padding", "fixed_patch", "random_patch", "full")
_SHAPE_KEYS = {"padding": "prompt_width", "fixed_patch": "patch_size", "random_patch": "patch_size", "full": "epsilon"}
# Bounds of a config's values: what torch, JSON and the service's database can hold.
MAX_SIDE = 1 << 16
MAX_SEED = (1 << 63) - 1
MAX_TASK_CHARS = 128
MAX_METHOD_CHARS = 32
MAX_MODEL_ID_CHARS = 256
MAX_SOURCES = 64
MAX_JSON_DEPTH = 16
_TEXT_FIELDS = {"task": MAX_TASK_CHARS, "method": MAX_METHOD_CHARS}
_DICT_FIELDS = ("hyperparameters", "templates", "data", "metrics")


@dataclass
class PromptConfig:
    """Everything needed to rebuild a prompt, plus provenance. Device and dtype are never saved."""

    shape: str = field(default="padding", metadata={"help": "padding | fixed_patch | random_patch | full"})
    image_height: int = field(default=224, metadata={"help": "H of the prompted image"})
    image_width: int = field(default=224, metadata={"help": "W of the prompted image"})
    prompt_width: int = field(default=30, metadata={"help": "p: border width of the padding prompt"})
    patch_size: int = field(default=30, metadata={"help": "side of the fixed/random patch prompt"})
    epsilon: float = field(default=0.1, metadata={"help": "L-inf bound of the full-frame prompt"})
    clamp: bool = field(default=True, metadata={"help": "keep δ (and so the prompted image) in [0,1]"})
    fit: str = field(default="squash", metadata={"help": "squash | crop: how an image becomes the inner image"})
    resample: str = field(default="bilinear", metadata={"help": "bilinear | bicubic resize kernel (antialiased)"})
    pixel_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    seed: int = field(default=0, metadata={"help": "seed for random patch placement at apply time"})
    method: str | None = field(default=None, metadata={"help": "vp | evp | tvp, or how it was made"})
    hyperparameters: dict[str, Any] = field(default_factory=dict, metadata={"help": "resolved training config"})
    sources: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "source models"})
    task: str | None = None
    choices: list[str] | None = None
    templates: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict, metadata={"help": "summary of the training data"})
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"help": "validation metrics, when known"})

    def __post_init__(self) -> None:
        if not isinstance(self.shape, str) or self.shape not in SHAPES:
            raise UsageError(f"field 'shape': {_short(self.shape)} is not one of {', '.join(SHAPES)}")
        for name in ("image_height", "image_width", "prompt_width", "patch_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"field '{name}': expected an integer, got {_short(value)}")
        if min(self.image_height, self.image_width) < 8:
            raise UsageError(f"field 'image_height'/'image_width': {self.image_height}x{self.image_width} is too small "
                             "(min 8)")
        if max(self.image_height, self.image_width) > MAX_SIDE:
            raise UsageError(f"field 'image_height'/'image_width': {self.image_height}x{self.image_width} is too large "
                             f"(max {MAX_SIDE})")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"field 'seed': {self.seed} must be in [0, 2^63 - 1]")
        if self.shape == "padding" and not 0 < 2 * self.prompt_width < min(self.image_height, self.image_width):
            raise UsageError(
                f"field 'prompt_width': {self.prompt_width} must be > 0 and leave an image inside "
                f"a {self.image_height}x{self.image_width} frame"
            )
        if self.shape.endswith("patch") and not 0 < self.patch_size <= min(self.image_height, self.image_width):
            raise UsageError(f"field 'patch_size': {self.patch_size} must be in [1, "
                             f"{min(self.image_height, self.image_width)}]")
        if (not isinstance(self.epsilon, int | float) or isinstance(self.epsilon, bool)
                or not (math.isfinite(self.epsilon) and self.epsilon > 0)):
            raise UsageError(f"field 'epsilon': {_short(self.epsilon)} must be a positive number")
        if self.fit not in FITS:
            raise UsageError(f"field 'fit': {_short(self.fit)} is not one of {', '.join(FITS)}")
        if self.resample not in RESAMPLES:
            raise UsageError(f"field 'resample': {_short(self.resample)} is not one of {', '.join(RESAMPLES)}")
        if not isinstance(self.clamp, bool):
            raise UsageError(f"field 'clamp': expected true or false, got {_short(self.clamp)}")
        if not isinstance(self.pixel_range, list | tuple) or list(self.pixel_range) != [0.0, 1.0]:
            raise UsageError(f"field 'pixel_range': only [0.0, 1.0] is supported, got {_short(self.pixel_range)}")
        self._check_provenance()

    def _check_provenance(self) -> None:
        """Types of the free-form fields: they end up in JSON responses and database columns."""
        for name, limit in _TEXT_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                _check_text(value, f"field '{name}'", limit)
        if not isinstance(self.sources, list) or len(self.sources) > MAX_SOURCES:
            raise UsageError(f"field 'sources': expected a list of at most {MAX_SOURCES} objects, got "
                             f"{_short(self.sources)}")
        for k, src in enumerate(self.sources):
            if not isinstance(src, dict):
                raise UsageError(f"field 'sources[{k}]': expected an object like {{\"model_id\": \"hf:...\"}}, got "
                                 f"{_short(src)}")
            if src.get("model_id") is not None:
                _check_text(src["model_id"], f"field 'sources[{k}].model_id'", MAX_MODEL_ID_CHARS)
            _check_json(src, f"field 'sources[{k}]'")
        if self.choices is not None:
            if not isinstance(self.choices, list):
                raise UsageError(f"field 'choices': expected a list of strings or null, got {_short(self.choices)}")
            for k, choice in enumerate(self.choices):
                if not isinstance(choice, str):
                    raise UsageError(f"field 'choices[{k}]': expected a string, got {_short(choice)}")
        for name in _DICT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise UsageError(f"field '{name}': expected an object, got {_short(value)}")
            _check_json(value, f"field '{name}'")

    @property
    def delta_shape(self) -> tuple[int, int, int]:
        if self.shape.endswith("patch"):
            return (3, self.patch_size, self.patch_size)
        return (3, self.image_height, self.image_width)

    @property
    def inner_size(self) -> tuple[int, int]:
        """Size the input image is resized to before the prompt is placed."""
        if self.shape == "padding":
            p = self.prompt_width
            return (self.image_height - 2 * p, self.image_width - 2 * p)
        return (self.image_height, self.image_width)

    def to_dict(self) -> dict[str, Any]:
        out = {"format_version": FORMAT_VERSION, "library_version": __version__}
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PromptConfig:
        """Build from a saved dict: checks the format version and required keys, drops unknown keys."""
        if not isinstance(data, dict):
            raise PromptFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version is None:
            raise PromptFileError(f"{source}: missing required key 'format_version'")
        if not isinstance(version, int) or version < 1:
            raise PromptFileError(f"{source}: field 'format_version': {version!r} is not a valid format version")
        if version > FORMAT_VERSION:
            raise PromptFileError(
                f"{source}: written by a newer tvprompt (format_version {version}; this one reads up to "
                f"{FORMAT_VERSION}): upgrade tvprompt"
            )
        shape = data.get("shape")
        required = ["shape", "image_height", "image_width"]
        if shape in _SHAPE_KEYS:
            required.append(_SHAPE_KEYS[shape])
        for key in required:
            if key not in data:
                raise PromptFileError(f"{source}: missing required key '{key}'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format_version", "library_version"})
        if unknown:
            log.warning("%s: ignoring unknown keys %s (written by a newer tvprompt?)", source, ", ".join(unknown))
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TvpError as e:
            raise PromptFileError(f"{source}: {e}") from None
        except TypeError as e:
            raise PromptFileError(f"{source}: {e}") from None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(value: Any, what: str, limit: int) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{what}: expected a string, got {_short(value)}")
    if not 0 < len(value) <= limit or not value.isprintable():
        raise UsageError(f"{what}: {_short(value)} must be 1 to {limit} printable characters")


def _check_json(value: Any, what: str, depth: int = 0) -> None:
    """Plain JSON only: objects with string keys, lists, strings, booleans, null, finite numbers."""
    if depth > MAX_JSON_DEPTH:
        raise UsageError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{what}: key {_short(key)} is not a string")
            _check_json(item, what, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, what, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"{what}: holds {value}; only finite numbers are allowed")
    elif not isinstance(value, str | int | bool) and value is not None:
        raise UsageError(f"{what}: {type(value).__name__} values are not allowed in a config")


class VisualPrompt(nn.Module):
    """A learnable pixel prompt. ``apply`` maps any-size [0,1] images to prompted (B, 3, H, W) images."""

    def __init__(self, config: PromptConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = PromptConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.delta = nn.Parameter(torch.zeros(config.delta_shape))
        self.register_buffer("mask", self._make_mask(config), persistent=False)

    @staticmethod
    def _make_mask(config: PromptConfig) -> torch.Tensor:
        """1 where δ acts; for the padding shape the border of width p, otherwise all of δ."""
        mask = torch.ones((1, *config.delta_shape[1:]))
        if config.shape == "padding":
            p = config.prompt_width
            mask[:, p:-p, p:-p] = 0
        return mask

    @property
    def num_parameters(self) -> int:
        """Number of trainable pixel values (3·(H·W − (H−2p)(W−2p)) for the padding prompt)."""
        return int(self.mask.sum().item()) * 3

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prompt a batch: (B, 3, h, w) float in [0, 1], any h, w -> (B, 3, H, W). Differentiable in δ."""
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(f"images must be (B, 3, h, w), got {tuple(images.shape)}")
        cfg = self.config
        delta = self.delta
        x = fit_images(images.to(device=delta.device, dtype=delta.dtype), cfg.inner_size, cfg.fit, cfg.resample)
        if cfg.shape == "padding":
            p = cfg.prompt_width
            return F.pad(x, (p, p, p, p)) + self.mask * delta
        if cfg.shape == "full":
            out = x + delta
            return out.clamp(0.0, 1.0) if cfg.clamp else out
        if cfg.shape == "fixed_patch":
            top = left = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        else:
            top, left = self._random_positions(x.shape[0], generator, x.device)
        return self._paste(x, delta, top, left)

    def _random_positions(self, batch: int, generator: torch.Generator | None, device: torch.device):
        cfg = self.config
        top = torch.randint(0, cfg.image_height - cfg.patch_size + 1, (batch,), generator=generator)
        left = torch.randint(0, cfg.image_width - cfg.patch_size + 1, (batch,), generator=generator)
        return top.to(device), left.to(device)

    @staticmethod
    def _paste(x: torch.Tensor, patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Replace a patch-sized window per image (at top[b], left[b]) by ``patch``, batched."""
        size = patch.shape[-1]
        ar = torch.arange(size, device=x.device)
        rows = (top[:, None] + ar)[:, :, None]  # (B, s, 1)
        cols = (left[:, None] + ar)[:, None, :]  # (B, 1, s)
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        out = x.clone()
        # advanced indices around a slice: the indexed view is (B, s, s, 3)
        out[batch, :, rows, cols] = patch.permute(1, 2, 0).expand(x.shape[0], -1, -1, -1)
        return out

    @torch.no_grad()
    def project_(self) -> None:
        """Project δ back onto its feasible set after an update (in place)."""
        cfg = self.config
        self.delta.mul_(self.mask)
        if cfg.shape == "full":
            self.delta.clamp_(-cfg.epsilon, cfg.epsilon)
        elif cfg.clamp:
            self.delta.clamp_(0.0, 1.0)

    @torch.no_grad()
    def render(self, background: float = 0.5) -> torch.Tensor:
        """The prompt on a uniform grey image, (3, H, W) in [0, 1]: what ``preview.png`` shows."""
        cfg = self.config
        grey = torch.full((1, 3, *cfg.inner_size), background, device=self.delta.device)
        if cfg.shape == "random_patch":  # show the patch in the centre
            h, w = cfg.image_height, cfg.image_width
            top = torch.tensor([(h - cfg.patch_size) // 2])
            left = torch.tensor([(w - cfg.patch_size) // 2])
            out = self._paste(grey, self.delta, top.to(grey.device), left.to(grey.device))
        else:
            out = self.apply(grey)
        return out[0].clamp(0, 1).cpu()

    def to_image(self):
        """The rendered prompt as a PIL image."""
        from .imageio import tensor_to_pil

        return tensor_to_pil(self.render())

    # ---------------------------------------------------------------- files
    def save_pretrained(self, directory: str | os.PathLike, transfer: dict[str, Any] | None = None) -> Path:
        """Write the prompt directory atomically (temp dir + rename). Returns its path.

        ``transfer``: a transfer table for the card (:func:`transfer_from_results` of a ``tvp eval``)."""
        from safetensors.torch import save_file

        from .imageio import tensor_to_pil

        directory = Path(directory)
        delta = self.delta.detach().to("cpu", torch.float32).contiguous()
        with atomic_dir(directory) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
            save_file({"delta": delta}, str(tmp / WEIGHTS_NAME), metadata={"format": "tvprompt"})
            tensor_to_pil(self.render()).save(tmp / PREVIEW_NAME)
            (tmp / CARD_NAME).write_text(model_card(self.config, transfer))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device | None = None, revision: str | None = None,
    ) -> VisualPrompt:
        """Load and validate a prompt directory, or a Hub repo ``user/name`` (``@rev`` or ``revision=``).

        Hub repos are downloaded to the huggingface_hub cache (prompt files only) and then validated
        like a local directory. Every failure is a one-line :class:`PromptFileError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .hub import resolve_prompt_dir

        directory = resolve_prompt_dir(directory, revision)
        if not directory.is_dir():
            raise PromptFileError(f"{directory}: not a prompt directory (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (cfg_path, w_path):
            if not path.is_file():
                raise PromptFileError(f"{path}: missing; a prompt directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            data = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PromptFileError(f"{cfg_path}: not valid JSON ({e})") from None
        except RecursionError:
            raise PromptFileError(f"{cfg_path}: JSON nested too deeply") from None
        config = PromptConfig.from_dict(data, source=str(cfg_path))
        try:
            tensors = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise PromptFileError(f"{w_path}: not a valid safetensors file ({e})") from None
        if "delta" not in tensors:
            raise PromptFileError(f"{w_path}: missing tensor 'delta' (found: {', '.join(sorted(tensors)) or 'none'})")
        delta = tensors["delta"]
        if delta.dtype != torch.float32:
            raise PromptFileError(f"{w_path}: tensor 'delta' must be float32, got "
                                  f"{str(delta.dtype).removeprefix('torch.')}")
        if tuple(delta.shape) != config.delta_shape:
            raise PromptFileError(
                f"{w_path}: tensor 'delta' has shape {tuple(delta.shape)} but {CONFIG_NAME} implies "
                f"{config.delta_shape}"
            )
        if not torch.isfinite(delta).all():
            raise PromptFileError(f"{w_path}: tensor 'delta' holds NaN or infinite values")
        bound = (-config.epsilon, config.epsilon) if config.shape == "full" else (0.0, 1.0)
        if (config.clamp or config.shape == "full") and (delta.min() < bound[0] or delta.max() > bound[1]):
            raise PromptFileError(
                f"{w_path}: tensor 'delta' has values in [{delta.min():.4g}, {delta.max():.4g}], outside "
                f"[{bound[0]:g}, {bound[1]:g}] required by clamp={config.clamp}"
            )
        prompt = cls(config)
        with torch.no_grad():
            prompt.delta.copy_(delta)
        return prompt.to(device) if device is not None else prompt

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        transfer: dict[str, Any] | None = None,
    ) -> str:
        """Create ``repo_id`` on the Hugging Face Hub if needed and upload this prompt's files; returns the URL."""
        from .hub import push_prompt

        return push_prompt(self, repo_id, private=private, token=token, revision=revision,
                           commit_message=commit_message, transfer=transfer)


def display_name(config: PromptConfig) -> str:
    """``method@source+source`` (``tvp@llava-p8``), the name tables give a prompt; ``prompt`` when unknown."""
    names = [str(s.get("name") or _model_name(str(s.get("model_id", "?")))) for s in config.sources]
    if not names:
        return config.method or "prompt"
    return f"{config.method or 'prompt'}@{'+'.join(names)}"


def _model_name(model_id: str) -> str:
    return Path(model_id.split(":", 1)[-1].rstrip("/")).name or model_id


def _hub_model(model_id: str) -> str | None:
    """The Hub repo id of a source model id (``hf:org/name`` or ``org/name``), None for zoo and local ones."""
    from .hub import looks_like_repo_id

    if model_id.startswith("zoo:") or not looks_like_repo_id(model_id):
        return None
    return model_id.removeprefix("hf:")


def card_metadata(config: PromptConfig) -> dict[str, Any]:
    """The model card's YAML metadata (Hub conventions: library, tags, base models, dataset, model-index)."""
    meta: dict[str, Any] = {"library_name": "tvprompt"}
    meta["tags"] = ["tvprompt", "visual-prompting", "image-text-to-text"] + ([config.method] if config.method else [])
    base = [b for b in (_hub_model(str(s.get("model_id", ""))) for s in config.sources) if b]
    if base:
        meta["base_model"] = base
    data_path = str(config.data.get("path") or "")
    dataset = data_path.removeprefix("hf:") if _hub_model(data_path) else config.task
    if dataset:
        meta["datasets"] = [dataset]
    val = config.metrics.get("val_accuracy")
    if isinstance(val, int | float) and not isinstance(val, bool):
        meta["metrics"] = ["accuracy"]
        meta["model-index"] = [{
            "name": display_name(config),
            "results": [{
                "task": {"type": "image-text-to-text", "name": config.task or "visual prompting"},
                "dataset": {"name": config.task or dataset or "unknown", "type": dataset or "unknown",
                            "split": config.data.get("val_split") or "val"},
                "metrics": [{"type": "accuracy", "value": float(val), "name": "validation accuracy"}],
            }],
        }]
    return meta


def transfer_from_results(results: dict[str, Any], prompt_name: str) -> dict[str, Any]:
    """The rows of one prompt in a ``tvp eval`` results.json: ``{metric, task, rows: {model: {...}}}``."""
    transfer = results.get("transfer", {})
    if prompt_name not in transfer:
        known = ", ".join(sorted(transfer)) or "none"
        raise UsageError(f"results.json has no prompt {prompt_name!r} (prompts: {known})")
    metric = results.get("primary_metric", "accuracy")
    rows = {m: {"clean": r["clean"].get(metric), "prompted": r["prompted"].get(metric),
                "delta": r["delta"].get(metric), "source": bool(r.get("source"))}
            for m, r in transfer[prompt_name].items()}
    return {"metric": metric, "task": results.get("task", {}).get("name"),
            "split": results.get("setup", {}).get("split"), "rows": rows}


def model_card(config: PromptConfig, transfer: dict[str, Any] | None = None) -> str:
    """The prompt's README.md: Hub metadata (YAML front matter), then a card for people."""
    import yaml

    src = ", ".join(s.get("model_id", "?") for s in config.sources) or "unknown"
    lines = [
        "---",
        yaml.safe_dump(card_metadata(config), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# Visual prompt {display_name(config)}: {config.task or 'untitled'}",
        "",
        f"- method: {config.method or 'unknown'}",
        f"- shape: {config.shape}, {config.image_height}x{config.image_width}"
        + (f", p={config.prompt_width}" if config.shape == "padding" else ""),
        f"- source models: {src}",
        f"- made with tvprompt {__version__}",
        "",
        "![prompt](preview.png)",
        "",
    ]
    if config.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in config.metrics.items()]
        lines.append("")
    if transfer and transfer.get("rows"):
        metric = transfer.get("metric", "accuracy")
        lines += [f"Transfer ({transfer.get('task') or config.task or 'task'}, split {transfer.get('split') or '?'}, "
                  f"{metric}; *italic* = a source model of this prompt):", "",
                  "| model | no prompt | prompted | Δ |", "|---|---|---|---|"]
        for model, r in transfer["rows"].items():
            name = f"*{model}*" if r.get("source") else model
            cells = [f"{r[k]:.4f}" if isinstance(r.get(k), int | float) else "-"
                     for k in ("clean", "prompted", "delta")]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    lines += [
        "Apply it to your images (a local directory or this Hub repository):",
        "",
        "```bash",
        "tvp apply --prompt THIS_DIR_OR_USER/REPO photos/ --output prompted/",
        "```",
        "",
        "```python",
        "from tvprompt import VisualPrompt",
        "prompt = VisualPrompt.from_pretrained(\"THIS_DIR_OR_USER/REPO\")",
        "```",
        "",
    ]
    return "\n".join(lines)
