"""Small stand-ins for the task, data, metrics and adapter pieces, for evaluation tests.

The toy adapter follows the MLLMAdapter protocol with a fixed random linear "model": scores
depend on the pixels (so prompts change them) and on the choice text, batched like a real one.
It counts its calls so tests can check that resumed cells are not recomputed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tvprompt.evaluation.evaluate import Backends


@dataclass
class ToySample:
    id: str
    image: torch.Tensor
    label: int
    answer: str = ""
    choices: list[str] | None = None


@dataclass
class ToyBatch:
    samples: list
    images: torch.Tensor
    index: list[int]


@dataclass
class ToySpec:
    name: str = "toy"
    version: int = 1
    kind: str = "classification"
    choices: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    metrics: list[str] = field(default_factory=lambda: ["top1"])
    instruction: str = "What colour dominates?"

    def prompt_for(self, sample, family=None):
        return f"{self.instruction} ({family})"

    def choices_for(self, sample):
        return list(sample.choices or self.choices)

    def choice_texts_for(self, sample):
        return self.choices_for(sample)

    def label_index(self, sample):
        return sample.label

    def answer_for(self, sample):
        return sample.answer or self.choices_for(sample)[sample.label]


def toy_dataset(n: int = 10, size: int = 24, seed: int = 0, choices_per_sample: bool = False) -> list[ToySample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = i % 3
        img = torch.rand(3, size, size, generator=g) * 0.5
        img[label] += 0.4
        ch = ["red", "green", "blue", "grey"] if choices_per_sample and i % 2 else None
        out.append(ToySample(id=f"s{i}", image=img.clamp(0, 1), label=label, answer=["Red", "green", "BLUE."][label],
                             choices=ch))
    return out


def toy_iter_batches(dataset, batch_size, *, shuffle=False, seed=0, image_size=32, start=0, num_workers=0):
    for s in range(start, len(dataset), batch_size):
        idx = list(range(s, min(s + batch_size, len(dataset))))
        samples = [dataset[i] for i in idx]
        images = F.interpolate(torch.stack([x.image for x in samples]), size=(image_size, image_size),
                               mode="bilinear", antialias=True, align_corners=False)
        yield ToyBatch(samples, images, idx)


def toy_accuracy(spec, records):
    if not records:
        return {}
    if "correct" in records[0]:
        return {"exact_match": sum(r["correct"] for r in records) / len(records)}
    return {"top1": sum(r["pred"] == r["label"] for r in records) / len(records)}


class ToyAdapter:
    family = "toy"
    input_size = (16, 16)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, model_id: str, calls: dict) -> None:
        self.model_id = model_id
        self.name = model_id.split(":")[-1]
        seed = zlib.crc32(model_id.encode())
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(3 * 16, 8, generator=g)
        self.calls = calls

    def preprocess(self, pixels01):
        x = F.interpolate(pixels01, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.5

    def vision_features(self, pixels01, kind="encoder"):
        x = F.adaptive_avg_pool2d(self.preprocess(pixels01), 4)  # (B, 3, 4, 4)
        return x.permute(0, 2, 3, 1).reshape(len(x), 16, 3)

    def _pooled(self, pixels01):
        return self.preprocess(pixels01).mean((2, 3))  # (B, 3)

    def _choice_vec(self, text):
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return torch.randn(3, generator=g)

    def score_choices(self, pixels01, prompts, choices):
        self.calls["score_choices"] = self.calls.get("score_choices", 0) + 1
        self.calls["images"] = self.calls.get("images", 0) + len(pixels01)
        assert len(prompts) == len(pixels01)
        colour = {"red": 0, "green": 1, "blue": 2}
        vecs = torch.stack([F.one_hot(torch.tensor(colour[c]), 3).float() * 3 if c in colour else self._choice_vec(c)
                            for c in choices])
        noise = torch.stack([self._choice_vec(c + self.model_id) for c in choices])
        return self._pooled(pixels01) @ (vecs + noise).T - 0.01 * torch.tensor([len(p) for p in prompts])[:, None]

    def generate(self, pixels01, prompts, max_new_tokens=16):
        self.calls["generate"] = self.calls.get("generate", 0) + 1
        idx = self._pooled(pixels01).argmax(1)
        return [["red", "Green!", "blue"][int(i)] for i in idx]

    def lm_loss(self, pixels01, prompts, answers):
        raise NotImplementedError


def toy_backends(calls: dict, spec: ToySpec | None = None, dataset=None) -> Backends:
    spec = spec or ToySpec()
    data = dataset if dataset is not None else toy_dataset()

    def load_adapter(model_id):
        calls.setdefault("loads", []).append(model_id)
        return ToyAdapter(model_id, calls)

    def open_dataset(spec_, path, split, seed=0, **kw):
        calls["open_kwargs"] = kw
        calls.setdefault("opened", []).append((path, split, kw.get("corruption"), kw.get("severity")))
        if kw.get("corruption"):  # a stand-in corruption: darken by severity
            factor = 1 - 0.15 * kw.get("severity", 3)
            return [ToySample(s.id, s.image * factor, s.label, s.answer, s.choices) for s in data]
        return data

    return Backends(lambda name: spec, open_dataset, toy_iter_batches, load_adapter, toy_accuracy, toy_fingerprint)


def toy_fingerprint(model_id: str) -> str:
    """Toy ids name no files: the id is the model's identity; ``toy:`` is the only scheme known."""
    from tvprompt.errors import UsageError

    if not model_id.startswith("toy:"):
        raise UsageError(f"--model {model_id}: unknown toy model")
    return model_id


def make_prompt(path, value: float = 0.9, width: int = 4, size: int = 32, sources=(), method="tvp", channel=None):
    from tvprompt.prompt import VisualPrompt

    prompt = VisualPrompt(image_height=size, image_width=size, prompt_width=width, method=method,
                          sources=[{"model_id": s} for s in sources])
    with torch.no_grad():
        if channel is None:
            prompt.delta.fill_(value)
        else:
            prompt.delta[channel].fill_(value)
        prompt.project_()
    return prompt.save_pretrained(path)


class ToyLMAdapter(ToyAdapter):
    """A toy adapter with a trainable-looking ``model`` (two Linear layers) and a differentiable lm_loss."""

    def __init__(self, model_id: str, calls: dict) -> None:
        super().__init__(model_id, calls)
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 7))
        self.model.requires_grad_(False).eval()

    def lm_loss(self, pixels01, prompts, answers):
        x = self.vision_features(pixels01).flatten(1)
        target = torch.tensor([zlib.crc32(a.encode()) % 7 for a in answers])
        return F.cross_entropy(self.model(x), target)
