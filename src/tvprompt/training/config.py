"""``TrainConfig``: every knob of the VP / EVP / TVP trainer, and how a run's config is resolved.

Resolution order (later wins): the method's preset -> the YAML config file -> command-line flags.
The three methods are presets of one trainer (DESIGN §1):

- ``vp``:  SGD + momentum on δ, lr 40, no FCA/TSE, no input diversity.
- ``evp``: normalised step ``δ <- project(δ − γ·g/‖g‖₂)`` (g restricted to the prompt's trainable
  pixels), cosine schedule, γ = 70, random horizontal flip.
- ``tvp``: evp + λ1·FCA − λ2·TSE; released defaults γ = 10, batch 16, λ1 = 0.005, λ2 = 0.001.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

METHODS = ("vp", "evp", "tvp")
UPDATES = ("sgd", "normalized")
SCHEDULES = ("cosine", "cosine_epoch", "constant")
FCA_DISTANCES = ("squared", "l2")
GRAD_NORMS = ("border", "frame")
IMAGE_FITS = ("squash", "crop")
RESAMPLES = ("bilinear", "bicubic")
# torch.compile modes of the source models and the guide (= tvprompt.models.compile.COMPILE_MODES,
# repeated here so that reading a config does not import torch)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

PRESETS: dict[str, dict[str, Any]] = {
    "vp": {"update": "sgd", "lr": 40.0, "momentum": 0.9, "fca": 0.0, "tse": 0.0, "flip": False},
    "evp": {"update": "normalized", "lr": 70.0, "fca": 0.0, "tse": 0.0, "flip": True},
    "tvp": {"update": "normalized", "lr": 10.0, "fca": 0.005, "tse": 0.001, "flip": True},
}

# Named recipes layered on the method's preset (before the config file and the flags).
# ``released``: the released TVP code (transfer_cls.py) step for step; see docs/training.md.
RECIPES: dict[str, dict[str, Any]] = {
    "released": {
        "method": "tvp", "update": "normalized", "lr": 10.0, "batch_size": 16, "fca": 0.005, "tse": 0.001,
        "flip": True, "fca_distance": "l2", "fca_features": "projected", "fca_reference": "shrunk",
        "grad_norm_over": "frame", "lr_schedule": "cosine_epoch", "warmup_steps": 0, "min_lr": 0.0,
        "clamp": False, "image_fit": "crop", "image_resample": "bicubic",
        "tse_template": "this is a photo of a {answer}", "tse_scale_clamp": 100.0, "tse_form": "similarity",
        "minigpt4_template": "released",
    },
}

# What a checkpoint written before these fields existed ran with (its config lacks them): a resumed
# run keeps that behaviour rather than switching to today's defaults half-way.
LEGACY_DEFAULTS: dict[str, Any] = {
    "preset": None, "fca_distance": "squared", "grad_norm_over": "border", "image_fit": "squash",
    "image_resample": "bilinear", "tse_template": None, "tse_scale_clamp": 0.0, "minigpt4_template": "chat",
}

# Options that change how a run executes but not its result: they may differ on --resume and
# are not part of the hyper-parameters saved with the prompt.
RUNTIME_FIELDS = frozenset(
    {"output", "device", "source_devices", "tensorboard", "progress", "num_workers", "gradient_checkpointing",
     "compile",
     "report_to", "device_map", "trust_remote_code", "overwrite"}
)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """A training run. Build it with :meth:`from_preset` (``TrainConfig.from_preset("vp", lr=30)``, what
    ``tvp train --method vp --lr 30`` runs) or :func:`resolve_config` (preset -> file -> flags). Built
    directly, the defaults are tvp's whatever ``method`` says; :func:`~tvprompt.training.loop.train`
    refuses such a vp / evp config (:func:`unapplied_preset`)."""

    method: str = _f("tvp", "vp | evp | tvp: the preset the other defaults come from")
    preset: str | None = _f(None, "a named recipe over the method's preset: released (the released TVP code)")
    sources: list[str] = _f([], "source model ids (several = ensemble, mean of per-model losses)")
    task: str | None = _f(None, "task name or YAML path")
    data: str | None = _f(None, "dataset path")
    guide: str | None = _f(None, "CLIP-like guide model id for TSE")
    output: str | None = _f(None, "output folder: prompt/, last/, checkpoint/, metrics.jsonl")
    # schedule
    steps: int | None = _f(None, "number of prompt updates (default: --epochs 1)")
    epochs: float | None = _f(None, "number of passes over the training split (instead of --steps)")
    batch_size: int = _f(16, "global batch per micro-step (split over processes)")
    grad_accum: int = _f(1, "micro-batches accumulated per update (effective batch = batch_size × grad_accum)")
    update: str = _f("normalized", "sgd (momentum) | normalized (γ·g/‖g‖₂ on the prompt's pixels)")
    lr: float = _f(10.0, "learning rate (sgd) or step size γ (normalized)")
    momentum: float = _f(0.9, "momentum of the sgd update")
    lr_schedule: str = _f("cosine", "cosine (per update) | cosine_epoch (per epoch, as the released code) | constant")
    warmup_steps: int = _f(0, "linear warm-up updates before the schedule")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    # prompt
    shape: str = _f("padding", "prompt shape (padding | fixed_patch | random_patch | full)")
    width: int = _f(30, "prompt width p of the padding prompt")
    patch_size: int = _f(30, "side of the fixed_patch / random_patch prompt")
    epsilon: float = _f(0.1, "L-inf bound of the full-frame prompt")
    image_size: int = _f(224, "side H = W of the prompted image")
    clamp: bool = _f(True, "project δ to [0, 1] after every update (false = released code)")
    grad_norm_over: str = _f("border", "normalise the gradient over the prompt's pixels (border) or the whole "
                             "frame, then mask (frame = released code)")
    image_fit: str = _f("crop", "squash (to the frame, then to the inner size) | crop (one resize of the shorter "
                        "side to the inner size + centre crop, as the released code)")
    image_resample: str = _f("bicubic",
                             "bicubic (released; CLIP-style processors) | bilinear resize kernel, antialiased")
    minigpt4_template: str = _f("chat", "MiniGPT-4 / VPGTrans sources: chat (###Human ... ###Assistant) | released "
                                "(the released code's <Img>…</Img> + instruction; choices ranked without ###)")
    # loss
    fca: float = _f(0.005, "λ1: weight of feature-consistency alignment")
    tse: float = _f(0.001, "λ2: weight of task-semantics enrichment (needs a guide)")
    fca_distance: str = _f("l2", "squared (½‖Δ‖² per token, the paper's Eq. 4) | l2 (‖Δ‖ per token, released code)")
    fca_features: str = _f("encoder", "encoder (vision-tower output) | projected (tokens the LLM sees)")
    fca_reference: str = _f("shrunk", "shrunk (same layout, δ = 0) | original (the unprompted image)")
    tse_form: str = _f("similarity", "similarity | contrastive")
    tse_template: str | None = _f(None, "TSE text template ({answer}, {question}, {text}) instead of the task's")
    tse_scale_clamp: float = _f(0.0, "cap the guide's logit scale at this value (released: 100; 0 = no cap)")
    fca_cache_mb: float = _f(1024.0, "memory budget of the FCA reference cache per source, in MiB (0 = no cache)")
    # input diversity
    flip: bool = _f(True, "random horizontal flip before prompting")
    jitter_scale: float = _f(0.0, "random zoom in [1 − s, 1 + s] (0 = off)")
    jitter_translate: float = _f(0.0, "random shift up to this fraction of the size (0 = off)")
    seed: int = _f(0, "seed for data order, augmentation and everything else")
    # data, validation, checkpoints
    train_split: str = _f("train", "split to train on")
    val_split: str | None = _f("val", "split to validate on (never test); none = no validation")
    val_every: int = _f(0, "validate every N updates (0 = only at the end)")
    val_max_samples: int | None = _f(None, "validate on at most this many samples (seeded subset)")
    val_batch_size: int | None = _f(None, "validation batch size (default: batch_size)")
    early_stop: int = _f(0, "stop after this many validations without improvement (0 = never)")
    ckpt_every: int = _f(100, "write a checkpoint every N updates (0 = only at the end / on Ctrl-C)")
    # runtime
    device: str | None = _f(None, "device for δ and the models (default: cuda if available, else cpu)")
    source_devices: list[str] = _f([], "one device per source (ensembles over several GPUs)")
    dtype: str = _f("auto", "model dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    device_map: str | None = _f(None, "auto: spread each source over every visible GPU (accelerate big-model loading)")
    revision: str | None = _f(None,
                              "branch, tag or commit of the Hub source models (org/name@rev: one model, the guide too)")
    trust_remote_code: bool = _f(False, "allow model families that run the checkpoint's own code (VisualGLM)")
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the source models")
    compile: str = _f("off", "torch.compile the transformer blocks of the sources and the guide: off | default | "
                      "reduce-overhead (CUDA graphs) | max-autotune; GPU, large batches; first steps pay compile time")
    num_workers: int | None = _f(None, "image-decoding worker processes (default: up to 4 on a GPU, 0 on a CPU)")
    report_to: list[str] = _f([], "experiment trackers for every metric row: tensorboard (OUTPUT/tensorboard), wandb, "
                              "trackio, mlflow, comet_ml, aim, clearml, dvclive, swanlab, all (installed ones) or none")
    tensorboard: bool = _f(False, "same as report_to: [tensorboard] (kept for old configs)")
    progress: bool = _f(True, "show a progress bar")
    overwrite: bool = _f(False, "replace the prompt/ (and checkpoint/) of an earlier run in --output")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"{flag_name(name)}: {why}")

        if self.method not in METHODS:
            raise bad("method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        for name, allowed in (
            ("update", UPDATES),
            ("lr_schedule", SCHEDULES),
            ("fca_distance", FCA_DISTANCES),
            ("grad_norm_over", GRAD_NORMS),
            ("image_fit", IMAGE_FITS),
            ("image_resample", RESAMPLES),
            ("minigpt4_template", ("chat", "released")),
            ("fca_features", ("encoder", "projected")),
            ("fca_reference", ("shrunk", "original")),
            ("tse_form", ("similarity", "contrastive")),
            ("compile", COMPILE_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.preset is not None and self.preset not in RECIPES:
            raise bad("preset", f"{self.preset!r} is not one of {', '.join(RECIPES)}")
        if self.grad_norm_over == "frame" and self.shape not in ("padding", "full"):
            raise bad("grad_norm_over", f"'frame' needs a padding or full prompt, not {self.shape!r}")
        if self.steps is not None and self.epochs is not None:
            raise UsageError("give either --steps or --epochs, not both")
        for name in ("batch_size", "grad_accum", "image_size", "width", "patch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise bad("steps", f"must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and not (self.epochs > 0):
            raise bad("epochs", f"must be positive, got {self.epochs!r}")
        for name in ("lr", "momentum", "min_lr", "fca", "tse", "jitter_scale", "jitter_translate", "fca_cache_mb",
                     "tse_scale_clamp"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise bad(name, f"must be a finite number >= 0, got {value!r}")
        if self.jitter_scale >= 1:
            raise bad("jitter_scale", f"must be < 1, got {self.jitter_scale}")
        for name in ("val_every", "ckpt_every", "early_stop", "warmup_steps", "num_workers"):
            if name == "num_workers" and self.num_workers is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, f"must be an integer >= 0, got {getattr(self, name)!r}")
        if self.shape == "padding" and not 2 * self.width < self.image_size:
            raise bad("width", f"{self.width} leaves no image inside a {self.image_size}-pixel prompt "
                               "(need 2 x --width < --image-size)")
        if self.shape in ("fixed_patch", "random_patch") and self.patch_size > self.image_size:
            raise bad("patch_size", f"{self.patch_size} is larger than --image-size {self.image_size}")
        if self.shape == "full" and not self.epsilon > 0:
            raise bad("epsilon", f"must be > 0 for the full prompt, got {self.epsilon!r}")
        if self.train_split == "test":
            raise bad("train_split", "training on the test split would report results on training data; use train")
        if self.val_split in ("test", "none", ""):
            if self.val_split == "test":
                raise bad("val_split", "validating on the test split would select on test data; use a val split")
            self.val_split = None
        if self.device_map not in (None, "auto"):
            raise bad("device_map", f"{self.device_map!r}: only auto is supported")
        if self.device_map and (self.device or self.source_devices):
            raise UsageError("give --device / --source-device or --device-map auto, not both")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        from .trackers import check_report_to

        check_report_to(list(self.report_to))
        if self.tensorboard and "tensorboard" not in self.report_to:
            self.report_to = [n for n in self.report_to if n != "none"] + ["tensorboard"]
        if self.source_devices and len(self.source_devices) != len(self.sources):
            raise bad("source_devices", f"{len(self.source_devices)} devices for {len(self.sources)} sources")

    @classmethod
    def from_preset(cls, method: str = "tvp", *, preset: str | None = None, **overrides: Any) -> TrainConfig:
        """The config ``tvp train --method METHOD [--preset PRESET] --OPTION VALUE ...`` runs: the method's
        preset, then the named recipe, then ``overrides`` (field names, as in a YAML config; None is a value)."""
        values = normalise_keys(overrides, "TrainConfig.from_preset")
        if "method" in values or "preset" in values:
            raise UsageError("TrainConfig.from_preset: give method and preset as its own arguments")
        config = dataclasses.replace(resolve_config(method, flags={"preset": preset}), **values)
        config._preset_applied = True
        return config

    def check_runnable(self) -> None:
        """The fields a real run needs; separate from ``__post_init__`` so partial configs can be built."""
        if not self.sources:
            raise UsageError("no source model: pass --source MODEL (repeat it for an ensemble)")
        for name in ("task", "data", "output"):
            if not getattr(self, name):
                raise UsageError(f"missing --{name}")
        if self.tse > 0 and not self.guide:
            raise UsageError(
                f"--method {self.method} uses TSE (--tse {self.tse:g}) which needs --guide MODEL (a CLIP-like model); "
                "pass one or set --tse 0"
            )

    def image_options(self) -> dict[str, Any]:
        """How the batcher sizes images: the frame side (squash + bilinear; ``prompt.apply`` then resizes
        to the inner size), or the prompt's own fit straight to its inner size (one resize; ``apply``
        then leaves it as it is, as ``tvp apply`` does from the original image)."""
        if (self.image_fit, self.image_resample) == ("squash", "bilinear"):
            return {"image_size": self.image_size}
        side = self.image_size - 2 * self.width if self.shape == "padding" else self.image_size
        return {"image_size": (side, side), "fit": self.image_fit, "resample": self.image_resample}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hyperparameters(self) -> dict[str, Any]:
        """The result-affecting fields (what a prompt directory records)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def unapplied_preset(config: TrainConfig) -> list[str]:
    """The fields of a directly built vp / evp config that still hold tvp's defaults where the method's
    preset says otherwise ([] for a config from :meth:`TrainConfig.from_preset` / :func:`resolve_config`)."""
    if getattr(config, "_preset_applied", False) or config.method not in PRESETS:
        return []
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return [k for k, v in PRESETS[config.method].items() if v != defaults[k] and getattr(config, k) == defaults[k]]


def config_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


_FLAGS = {"sources": "--source", "source_devices": "--source-device", "clamp": "--no-clamp",
          "progress": "--no-progress"}


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``task`` (when it names a YAML file) and ``data`` made absolute, so ``--resume`` works from any folder."""
    out = dict(values)
    task = out.get("task")
    if isinstance(task, str) and (task.endswith((".yaml", ".yml")) or "/" in task) and Path(task).expanduser().exists():
        out["task"] = str(Path(task).expanduser().resolve())
    data = out.get("data")
    if isinstance(data, str) and Path(data).expanduser().exists():
        out["data"] = str(Path(data).expanduser().resolve())
    return out


def flag_name(field_name: str) -> str:
    """The command-line flag of a TrainConfig field (``val_max_samples`` -> ``--val-max-samples``)."""
    return _FLAGS.get(field_name) or "--" + field_name.replace("_", "-")


_FLOAT_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type))


def _number(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``4e1`` and ``1e-3`` (no dot) as strings: read them as the numbers users meant."""
    if name in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # __post_init__ names the field and the bad value
    return value


def normalise_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept ``some-key`` and ``some_key``; ``source`` as an alias of ``sources``; reject unknown keys."""
    out: dict[str, Any] = {}
    known = config_keys()
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "source":
            name = "sources"
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "`tvp train --help` lists the options"
            raise UsageError(f"{source}: unknown key '{key}'; {hint}")
        if name in ("sources", "source_devices", "report_to") and isinstance(value, str):
            value = [value]
        out[name] = _number(name, value)
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of TrainConfig fields."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of training options, got {type(data).__name__}")
    return normalise_keys(data, str(path))


def resolve_config(
    method: str | None = None, file_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset of the method (flag, else file, else tvp) -> file values -> flags (``None`` = not given)."""
    file_values = dict(file_values or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    preset = flags.get("preset") or file_values.get("preset")
    if preset is not None and preset not in RECIPES:
        raise UsageError(f"--preset {preset!r} is not one of {', '.join(RECIPES)}")
    recipe = RECIPES.get(preset, {}) if preset else {}
    method = method or flags.get("method") or file_values.get("method") or recipe.get("method") or "tvp"
    if method not in PRESETS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if recipe and recipe["method"] != method:
        raise UsageError(f"--preset {preset} is a {recipe['method']} recipe; drop --method {method} or the preset")
    values: dict[str, Any] = {"method": method, **PRESETS[method], **recipe, "preset": preset}
    values.update(file_values)
    if "steps" in flags and "epochs" not in flags:  # a flag overrides the file's way of counting
        values.pop("epochs", None)
    if "epochs" in flags and "steps" not in flags:
        values.pop("steps", None)
    values.update(flags)
    values["method"] = method
    config = TrainConfig(**values)
    config._preset_applied = True  # values equal to tvp's defaults here are the caller's choice
    return config
