"""Request and response bodies of the HTTP API (pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong and what to do")


class FileInfo(BaseModel):
    size: int
    sha256: str


class VersionOut(BaseModel):
    id: str
    version: int
    sha256: str
    created_at: str


class PromptOut(BaseModel):
    id: str
    owner: str
    name: str
    version: int
    task: str | None
    method: str | None
    shape: str
    image_size: list[int]
    sources: list[dict[str, Any]]
    metrics: dict[str, Any]
    sha256: str = Field(description="sha256 of the archive served by /download")
    size: int
    files: dict[str, FileInfo]
    format_version: int | None
    library_version: str | None
    created_at: str


class PromptDetail(PromptOut):
    config: dict[str, Any]
    versions: list[VersionOut]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["vp", "evp", "tvp"]
    sources: list[str] = Field(min_length=1, max_length=8, description="source model ids")
    task: str | None = Field(default=None, min_length=1, max_length=128,
                             description="task name; with dataset_id, the uploaded dataset's task spec is used")
    dataset: str | None = Field(default=None, min_length=1, max_length=512,
                                description="manifest path relative to the server's data root")
    dataset_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$", description="one of your uploaded datasets")
    guide: str | None = Field(default=None, max_length=256, description="CLIP guide model id (tvp)")
    steps: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    name: str | None = Field(default=None, max_length=64, description="registry name of the resulting prompt")

    @model_validator(mode="after")
    def _one_dataset(self) -> JobCreate:
        if (self.dataset is None) == (self.dataset_id is None):
            raise ValueError("give either dataset (a manifest under the data root, with task) or dataset_id (an "
                             "upload)")
        if self.dataset is not None and self.task is None:
            raise ValueError("task: required with dataset")
        if self.dataset_id is not None and self.task is not None:
            raise ValueError("task: leave it out with dataset_id (the upload's task spec is used)")
        return self


class JobOut(BaseModel):
    id: str
    owner: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any]
    progress: float | None = Field(description="step / total_steps when the trainer reports both")
    step: int | None
    total_steps: int | None
    metrics: dict[str, Any] | None = Field(description="the latest metrics.jsonl record")
    error: str | None
    prompt_id: str | None = Field(description="the registered prompt, once succeeded")
    created_at: str
    started_at: str | None
    finished_at: str | None


class DatasetOut(BaseModel):
    id: str
    owner: str
    name: str
    size: int = Field(description="bytes of the uploaded zip")
    images: int
    layout: Literal["manifest", "folders"]
    choices: list[str]
    instruction: str
    splits: dict[str, int] = Field(description="images per split (no val: carved from train when training)")
    created_at: str


class HostedModel(BaseModel):
    id: str
    name: str
    family: str


class ChoiceScores(BaseModel):
    answer: str = Field(description="the top-scoring choice")
    scores: list[float] = Field(description="per choice: mean log-likelihood per answer token")
    probabilities: list[float] = Field(description="softmax of the scores over the choices")


class ModelAnswer(BaseModel):
    model: str
    name: str
    without_prompt: ChoiceScores
    with_prompt: ChoiceScores


class AskOut(BaseModel):
    prompt_id: str
    question: str
    choices: list[str]
    answers: list[ModelAnswer]
