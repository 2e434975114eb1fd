"""Hosted models answering questions about an image, with and without a prompt (``POST /prompts/{id}/ask``).

``tvp serve --model zoo:llava-p8 --model hf:...`` loads each model once when the server starts.
An ask ranks the choices by likelihood with the adapter's ``score_choices``, as ``tvp eval`` does,
for the clean image (fitted to the prompt's size as its inner image is fitted, the evaluator's
"no prompt" cell) and for the prompted image. Requests go through a bounded queue (full: the
caller gets 503) to one worker thread, which takes up to ``batch_size`` waiting requests and
scores those sharing a choice set and an image size in one batched call per model.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import string
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError
from ..imagefit import fit_images
from ..prompt import VisualPrompt
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)
MAX_CHOICES = 32
MAX_CHOICE_CHARS = 100
MAX_QUESTION_CHARS = 500


class QueueFull(Exception):
    """Every queue slot is taken: try again later."""


@dataclass
class Question:
    """One ask: the texts each model sees, and the clean and prompted images (3, H, W)."""

    question: str
    choices: list[str]
    templates: dict[str, Any]
    clean: torch.Tensor
    prompted: torch.Tensor
    done: Future = field(default_factory=Future)

    def instruction(self, family: str) -> str:
        by_family = self.templates.get("instruction_by_family") or {}
        template = by_family.get(family) if isinstance(by_family, dict) else None
        return _fill(template or self.templates.get("instruction") or "{question}", self)

    def choice_texts(self) -> list[str]:
        template = self.templates.get("answer") or "{answer}"
        return [_fill(template, self, answer=c) for c in self.choices]


def _fill(template: Any, q: Question, answer: str | None = None) -> str:
    """A task template filled with the question (``{question}``, ``{text}``, ``{choices}``, ``{answer}``)."""
    fields = {"question": q.question, "text": "", "choices": ", ".join(q.choices), "answer": answer or ""}
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(str(template)) if n is not None}
        if not names <= set(fields):
            raise ValueError(f"unknown fields {names - set(fields)}")
        return str(template).format_map(fields)
    except ValueError:  # a template this page cannot fill: the plain texts
        return answer if answer is not None else q.question


def check_question(question: str, choices: list[str]) -> tuple[str, list[str]]:
    question = question.strip()
    if not question or len(question) > MAX_QUESTION_CHARS:
        raise UsageError(f"question: give 1-{MAX_QUESTION_CHARS} characters")
    choices = [c.strip() for c in choices if c.strip()]
    if not 2 <= len(choices) <= MAX_CHOICES:
        raise UsageError(f"choices: give 2-{MAX_CHOICES} non-empty choices, got {len(choices)}")
    if len(set(choices)) != len(choices):
        raise UsageError("choices: each choice once")
    if any(len(c) > MAX_CHOICE_CHARS for c in choices):
        raise UsageError(f"choices: at most {MAX_CHOICE_CHARS} characters each")
    return question, choices


def make_question(prompt: VisualPrompt, image: torch.Tensor, question: str, choices: list[str] | None) -> Question:
    """The ask for ``image`` (3, h, w) in [0, 1]; ``choices`` default to the prompt's task choices."""
    cfg = prompt.config
    if not choices and not cfg.choices:
        raise UsageError("choices: this prompt's task has no choices to default to; give at least 2")
    question, choices = check_question(question, list(choices or cfg.choices or []))
    templates = cfg.templates if isinstance(cfg.templates, dict) else {}
    size = (cfg.image_height, cfg.image_width)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        prompted = prompt.apply(image[None], generator=gen)[0]
    clean = fit_images(image[None], size, cfg.fit, cfg.resample)[0]  # the frame the prompt fits its inner image by
    return Question(question, choices, templates, clean, prompted)


class ModelHost:
    """The hosted adapters, a bounded queue and the worker that batches waiting asks."""

    def __init__(self, adapters: list[Any], queue_size: int = 16, batch_size: int = 8,
                 limiter: RateLimiter | None = None) -> None:
        self.adapters = adapters
        self.limiter = limiter or RateLimiter(60.0, 10)
        self.batch_size = batch_size
        self._queue: queue.Queue[Question | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.batches: list[int] = []  # sizes of the batches run (the last 100), for tests and logs

    @classmethod
    def load(cls, model_ids: list[str], device: str | None = None, queue_size: int = 16, batch_size: int = 8,
             limiter: RateLimiter | None = None) -> ModelHost:
        from ..models.registry import load_adapter

        if len(set(model_ids)) != len(model_ids):
            raise UsageError("--model: the same model is listed twice")
        adapters = []
        for model_id in model_ids:
            log.info("hosting %s", model_id)
            adapters.append(load_adapter(model_id, device=device))
        return cls(adapters, queue_size, batch_size, limiter)

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": a.model_id, "name": getattr(a, "name", a.model_id), "family": a.family} for a in self.adapters]

    def start(self) -> None:
        if self.adapters and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tvp-ask", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, q: Question) -> Future:
        if not self.adapters:
            raise UsageError("this server hosts no models: start it with --model ID (or --demo)")
        try:
            self._queue.put_nowait(q)
        except queue.Full:
            raise QueueFull from None
        return q.done

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            groups: dict[tuple, list[Question]] = {}
            for q in batch:
                groups.setdefault((tuple(q.choices), tuple(q.clean.shape)), []).append(q)
            for group in groups.values():
                try:
                    results = self.answer(group)
                except Exception as e:  # noqa: BLE001 - one failed batch must not stop the worker
                    log.error("ask failed: %s", e, exc_info=e)
                    for q in group:
                        q.done.set_exception(e)
                    continue
                for q, result in zip(group, results, strict=True):
                    q.done.set_result(result)

    @torch.no_grad()
    def answer(self, group: list[Question]) -> list[list[dict[str, Any]]]:
        """Per question, per model: the top choice and the scores without and with the prompt."""
        self.batches = [*self.batches[-99:], len(group)]
        choices = group[0].choices
        n = len(group)
        out: list[list[dict[str, Any]]] = [[] for _ in group]
        for adapter in self.adapters:
            pixels = torch.stack([q.clean for q in group] + [q.prompted for q in group]).to(adapter.device)
            texts = [q.instruction(adapter.family) for q in group] * 2
            scores = adapter.score_choices(pixels, texts, group[0].choice_texts()).float().cpu()
            probs = scores.softmax(-1)
            for i in range(n):
                row: dict[str, Any] = {"model": adapter.model_id, "name": getattr(adapter, "name", adapter.model_id)}
                for key, j in (("without_prompt", i), ("with_prompt", n + i)):
                    best = int(scores[j].argmax())
                    row[key] = {"answer": choices[best], "scores": [round(float(x), 4) for x in scores[j]],
                                "probabilities": [round(float(x), 4) for x in probs[j]]}
                out[i].append(row)
        return out
