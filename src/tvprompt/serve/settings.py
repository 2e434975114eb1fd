"""Service settings: one object, passed to :func:`tvprompt.serve.create_app`; nothing read at import time."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .archive import ArchiveLimits

MiB = 1 << 20


@dataclass
class Settings:
    """Everything the service needs. Paths are resolved at construction; limits are in bytes/pixels."""

    store_dir: Path = field(default=Path("tvp-store"), metadata={"help": "content-addressed prompt files"})
    db_url: str | None = field(default=None, metadata={"help": "SQLAlchemy URL; default sqlite in store_dir"})
    data_root: Path | None = field(default=None, metadata={"help": "folder of dataset manifests jobs may use"})
    jobs_dir: Path | None = field(default=None, metadata={"help": "job work folders; default store_dir/jobs"})
    train_command: list[str] = field(
        default_factory=lambda: [sys.executable, "-m", "tvprompt", "train"],
        metadata={"help": "argv prefix of the trainer; the job's flags are appended"},
    )
    max_concurrent_jobs: int = 1
    job_timeout_s: float = 24 * 3600.0
    allowed_models: list[str] | None = field(default=None, metadata={"help": "model ids jobs may use (None: any)"})
    max_request_bytes: int = 80 * MiB
    max_upload_bytes: int = 64 * MiB
    max_unpacked_bytes: int = 96 * MiB
    max_zip_members: int = 16
    max_compression_ratio: float = 200.0
    max_dataset_images: int = field(default=2000, metadata={"help": "images in one uploaded dataset"})
    max_datasets_per_owner: int = 20
    max_json_bytes: int = field(default=1 * MiB, metadata={"help": "JSON request bodies"})
    max_image_bytes: int = 20 * MiB
    max_image_pixels: int = field(default=16_000_000, metadata={"help": "decoded pixels of an image sent to apply"})
    max_prompt_pixels: int = 4096 * 4096
    apply_rate_per_minute: float = 120.0
    apply_burst: int = 30
    max_concurrent_applies: int = field(default=2, metadata={"help": "applies decoding/prompting at once"})
    max_queued_applies: int = field(default=8, metadata={"help": "applies waiting for a slot; more get 503"})
    apply_queue_timeout_s: float = field(default=30.0, metadata={"help": "longest wait for an apply slot (then 503)"})
    cors_origins: list[str] = field(default_factory=list, metadata={"help": "empty: CORS off"})
    forwarded_allow_ips: list[str] = field(
        default_factory=list, metadata={"help": "proxy addresses whose X-Forwarded-For is trusted (empty: none)"}
    )
    header_timeout_s: float = field(default=10.0, metadata={"help": "longest wait for a request's headers"})
    body_timeout_s: float = field(default=30.0, metadata={"help": "longest wait for the next chunk of a request body"})
    keep_alive_timeout_s: float = field(default=5.0,
                                        metadata={"help": "idle keep-alive connections are closed after this"})
    prompt_cache_size: int = 32
    torch_threads: int | None = 1
    # hosted models for POST /prompts/{id}/ask (the web front's "ask")
    hosted_models: list[str] = field(default_factory=list, metadata={"help": "model ids loaded at start for ask"})
    model_device: str | None = field(default=None, metadata={"help": "device of the hosted models (None: CUDA if any)"})
    ask_queue_size: int = 16
    ask_batch_size: int = 8
    ask_rate_per_minute: float = 30.0
    ask_burst: int = 10
    ask_timeout_s: float = 120.0
    demo: bool = field(default=False, metadata={"help": "register the demo prompts at start (tvp serve --demo)"})

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir).resolve()
        if self.data_root is not None:
            self.data_root = Path(self.data_root).resolve()
        self.jobs_dir = Path(self.jobs_dir).resolve() if self.jobs_dir is not None else self.store_dir / "jobs"
        if self.db_url is None:
            self.db_url = f"sqlite:///{self.store_dir / 'registry.db'}"
        self.train_command = [str(x) for x in self.train_command]
        if not self.train_command:
            raise UsageError("setting 'train_command': must name a program")
        for name in (
            "max_concurrent_jobs",
            "max_request_bytes",
            "max_upload_bytes",
            "max_unpacked_bytes",
            "max_zip_members",
            "max_dataset_images",
            "max_datasets_per_owner",
            "max_image_bytes",
            "max_json_bytes",
            "max_concurrent_applies",
            "max_image_pixels",
            "max_prompt_pixels",
            "apply_burst",
            "prompt_cache_size",
            "ask_queue_size",
            "ask_batch_size",
            "ask_burst",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"setting '{name}': expected a positive integer, got {value!r}")
        if not isinstance(self.max_queued_applies, int) or self.max_queued_applies < 0:
            raise UsageError(f"setting 'max_queued_applies': expected an integer >= 0, got {self.max_queued_applies!r}")
        for name in ("apply_rate_per_minute", "apply_queue_timeout_s", "header_timeout_s", "body_timeout_s",
                     "keep_alive_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise UsageError(f"setting '{name}': must be a number > 0, got {value!r}")
        self.forwarded_allow_ips = [str(x) for x in self.forwarded_allow_ips]
        self.hosted_models = [str(m) for m in self.hosted_models]
        for name in ("ask_rate_per_minute", "ask_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"setting '{name}': must be > 0, got {getattr(self, name)!r}")

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_archive_bytes=self.max_upload_bytes,
            max_unpacked_bytes=self.max_unpacked_bytes,
            max_weights_bytes=self.max_unpacked_bytes,
            max_members=self.max_zip_members,
            max_ratio=self.max_compression_ratio,
        )

    @property
    def datasets_dir(self) -> Path:
        return self.store_dir / "datasets"

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)
