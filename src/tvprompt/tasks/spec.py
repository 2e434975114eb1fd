"""`TaskSpec`: how a dataset's samples become instructions, answers, choices and task texts.

A spec is a small YAML file (``version: 1``)::

    version: 1
    name: cifar10
    kind: classification          # classification | counting | yes_no | binary_auc | open
    format: cifar10               # default reader when the data path's layout is ambiguous
    instruction: "This is a photo of a"
    instruction_by_family: {qwen2_vl: "What is in this image? Answer with one word."}
    answer: "{answer}"
    choices: [airplane, automobile, ...]
    tse_text: "a photo of a {answer}."   # "" = this task has no TSE text
    metrics: [top1, top5]
    splits: {train: train, val: null, test: test}

Placeholders: ``{question}``, ``{text}``, ``{choices}`` (comma-joined) in the instruction;
``{answer}``, ``{question}``, ``{text}`` in the answer and TSE templates.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import TvpError

if TYPE_CHECKING:
    from ..data.sample import Sample

log = logging.getLogger(__name__)

SPEC_VERSION = 1
KINDS = ("classification", "counting", "yes_no", "binary_auc", "open")
METRICS = ("top1", "top5", "accuracy", "auc", "precision", "recall", "f1", "yes_ratio", "exact_match")
SPLITS = ("train", "val", "test")
_INSTRUCTION_FIELDS = frozenset({"question", "text", "choices"})
_ANSWER_FIELDS = frozenset({"answer", "question", "text"})
_DEFAULT_METRICS = {
    "classification": ["top1", "top5"],
    "counting": ["accuracy"],
    "yes_no": ["accuracy", "precision", "recall", "f1", "yes_ratio"],
    "binary_auc": ["auc", "accuracy"],
    "open": ["exact_match"],
}


def refine_name(name: str) -> str:
    """Class-name refinement: lowercase, ``_`` and ``-`` become spaces, whitespace collapsed."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def normalize_answer(text: str) -> str:
    """Loose match key for free-form answers: lowercase, outer punctuation and spaces stripped."""
    return " ".join(str(text).lower().strip().strip(".!?,;:\"'").split())


def _template_fields(template: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise TvpError(f"{where}: bad template {template!r} ({e}); double braces {{{{ }}}} for a literal "
                       "brace") from None


@dataclass
class TaskSpec:
    """One downstream task. Build with :func:`tvprompt.tasks.load_task` or :meth:`from_dict`."""

    name: str = field(metadata={"help": "task name, e.g. cifar10"})
    kind: str = field(default="classification", metadata={"help": " | ".join(KINDS)})
    version: int = field(default=SPEC_VERSION, metadata={"help": "spec file format version"})
    description: str = field(default="", metadata={"help": "one line for `tvp tasks`"})
    format: str | None = field(default=None, metadata={"help": "reader used when the layout does not say"})
    format_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "reader options, e.g. subset"})
    instruction: str = field(default="{question}", metadata={"help": "instruction template"})
    instruction_by_family: dict[str, str] = field(default_factory=dict, metadata={"help": "family -> template"})
    answer: str = field(default="{answer}", metadata={"help": "target answer template"})
    choices: list[str] | None = field(default=None, metadata={"help": "answer set; null = from the data"})
    classes: list[str] | None = field(default=None, metadata={"help": "raw dataset class names, same order"})
    refine_choices: bool = field(default=True, metadata={"help": "lowercase choices, _ and - -> space"})
    positive: str = field(default="yes", metadata={"help": "positive choice for AUC / precision / recall"})
    tse_text: str = field(default="", metadata={"help": "TSE text template; empty = no TSE"})
    tse_answers: dict[str, str] = field(default_factory=dict, metadata={
        "help": "answer -> the words put for {answer} in tse_text (e.g. yes -> hateful); others as they are"})
    metrics: list[str] = field(default_factory=list, metadata={"help": "metrics to report"})
    splits: dict[str, Any] = field(
        default_factory=lambda: {"train": "train", "val": None, "test": "test"},
        metadata={"help": "our split -> dataset split name (or list of alternatives); val null = carved"},
    )
    holdout: float = field(default=0.5, metadata={"help": "test share when train and test name one pool"})
    source: str = field(default="", metadata={"help": "where the spec was read from (not saved)"})

    def __post_init__(self) -> None:
        where = self.source or f"task {self.name}"
        if self.version > SPEC_VERSION:
            raise TvpError(f"{where}: spec version {self.version} is newer than supported ({SPEC_VERSION}); upgrade "
                           "tvprompt")
        if self.kind not in KINDS:
            raise TvpError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.metrics:
            self.metrics = list(_DEFAULT_METRICS[self.kind])
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise TvpError(f"{where}: unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
        for tpl, allowed, what in [
            (self.instruction, _INSTRUCTION_FIELDS, "instruction"),
            *((t, _INSTRUCTION_FIELDS, f"instruction_by_family.{k}") for k, t in self.instruction_by_family.items()),
            (self.answer, _ANSWER_FIELDS, "answer"),
            (self.tse_text, _ANSWER_FIELDS, "tse_text"),
        ]:
            extra = _template_fields(tpl, f"{where}: {what}") - allowed
            if extra:
                raise TvpError(
                    f"{where}: {what} uses unknown placeholder(s) {', '.join(sorted(extra))}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        if self.choices is not None:
            self.choices = [str(c) for c in self.choices]
            if self.refine_choices:
                self.choices = [refine_name(c) for c in self.choices]
            if len(set(self.choices)) != len(self.choices):
                raise TvpError(f"{where}: choices repeat after refinement; list distinct names")
            if self.classes is not None and len(self.classes) != len(self.choices):
                raise TvpError(f"{where}: classes has {len(self.classes)} entries but choices {len(self.choices)}")
        elif self.kind in ("yes_no", "binary_auc"):
            self.choices = ["yes", "no"]
        binary_only = sorted({"auc", "precision", "recall", "f1", "yes_ratio"} & set(self.metrics))
        if binary_only and self.kind not in ("yes_no", "binary_auc"):
            raise TvpError(f"{where}: metric(s) {', '.join(binary_only)} need kind yes_no or binary_auc, not "
                           f"{self.kind}")
        if self.kind in ("yes_no", "binary_auc") and self.positive not in (self.choices or []):
            raise TvpError(f"{where}: positive {self.positive!r} is not among the choices {self.choices}")
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in self.tse_answers.items()):
            raise TvpError(f"{where}: tse_answers must map answer text to text; quote yes/no keys "
                           f"(YAML reads a bare yes as true), got {self.tse_answers!r}")
        unknown_splits = set(self.splits) - set(SPLITS)
        if unknown_splits:
            raise TvpError(f"{where}: splits has unknown key(s) {', '.join(sorted(unknown_splits))}; use "
                           "train/val/test")
        if not 0.0 < self.holdout < 1.0:
            raise TvpError(f"{where}: holdout must be in (0, 1), got {self.holdout}")

    # ---- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> TaskSpec:
        where = source or "task spec"
        if not isinstance(data, dict):
            raise TvpError(f"{where}: expected a YAML mapping at the top level")
        if "name" not in data:
            raise TvpError(f"{where}: missing required field 'name'")
        if "version" not in data:
            raise TvpError(f"{where}: missing field 'version' (write `version: {SPEC_VERSION}`)")
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:  # a misspelt key would otherwise train with that field's default (an empty instruction)
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise TvpError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; {hint}")
        kwargs = {k: v for k, v in data.items() if k in known}
        for key, typ in [("choices", list), ("classes", list), ("metrics", list), ("splits", dict),
                         ("instruction_by_family", dict), ("format_options", dict),
                         ("tse_answers", dict)]:  # fmt: skip
            if kwargs.get(key) is not None and not isinstance(kwargs[key], typ):
                raise TvpError(f"{where}: field {key!r} must be a {typ.__name__}")
        for key in ("instruction", "answer", "tse_text"):
            if key in kwargs:
                kwargs[key] = "" if kwargs[key] is None else str(kwargs[key])
        splits = {"train": "train", "val": None, "test": "test"}
        splits.update(kwargs.get("splits") or {})
        kwargs["splits"] = splits
        return cls(**kwargs, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TaskSpec:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise TvpError(f"{path}: cannot read task spec ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            raise TvpError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    # ---- texts for one sample ----------------------------------------------------------------------
    def choices_for(self, sample: Sample) -> list[str]:
        """The answer set for this sample: its own choices (POPE, manifests) or the task's."""
        if sample.choices:
            return list(sample.choices)
        if self.choices is None:
            raise TvpError(f"task {self.name}: no choices in the spec and sample {sample.id} carries none")
        return list(self.choices)

    def label_index(self, sample: Sample) -> int:
        """Index of the correct answer in :meth:`choices_for`."""
        choices = self.choices_for(sample)
        if sample.label is not None:
            if not 0 <= sample.label < len(choices):
                raise TvpError(f"task {self.name}: sample {sample.id} label {sample.label} outside {len(choices)} "
                               "choices")
            return int(sample.label)
        key = normalize_answer(sample.answer)
        for i, c in enumerate(choices):
            if normalize_answer(c) == key or refine_name(c) == refine_name(sample.answer):
                return i
        raise TvpError(f"task {self.name}: sample {sample.id} answer {sample.answer!r} is not one of the choices")

    def _fields(self, sample: Sample) -> dict[str, str]:
        return {
            "question": sample.question or "",
            "text": sample.text or "",
            "choices": ", ".join(sample.choices or self.choices or []),
        }

    def prompt_for(self, sample: Sample, family: str | None = None) -> str:
        """The instruction for this sample; a per-family override wins when one is set."""
        template = self.instruction_by_family.get(family, self.instruction) if family else self.instruction
        return template.format_map(self._fields(sample))

    def _answer_text(self, sample: Sample) -> str:
        if self.kind == "open" or (self.choices is None and not sample.choices):
            return sample.answer
        return self.choices_for(sample)[self.label_index(sample)]

    def answer_for(self, sample: Sample) -> str:
        """The target answer text (what L_LLM trains towards)."""
        return self.answer.format_map({**self._fields(sample), "answer": self._answer_text(sample)})

    def choice_texts_for(self, sample: Sample) -> list[str]:
        """Every choice rendered through the answer template (what score_choices compares)."""
        fields = self._fields(sample)
        return [self.answer.format_map({**fields, "answer": c}) for c in self.choices_for(sample)]

    def tse_text_for(self, sample: Sample) -> str | None:
        """CLIP task text for TSE, or None when this task (or sample) has none."""
        if not self.tse_text:
            return None
        answer = self._answer_text(sample)
        text = self.tse_text.format_map({**self._fields(sample),
                                         "answer": self.tse_answers.get(answer, answer)}).strip()
        return text or None

    def tse_texts(self) -> list[str] | None:
        """Task texts for every choice (TSE ``contrastive``), or None when not defined."""
        if not self.tse_text or not self.choices or not _template_fields(self.tse_text, "tse_text") <= {"answer"}:
            return None
        return [self.tse_text.format(answer=self.tse_answers.get(c, c)) for c in self.choices]
