"""Small differentiable stand-ins for the adapter, guide, task spec and dataset contracts.

They implement exactly the methods the trainer calls, so the update math, ensembles, caching,
checkpoints and data parallelism can be checked on a CPU in milliseconds, independently of the
real model families.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tvprompt.imagefit import fit_images

CHOICES = ["red", "green", "blue"]


@dataclass
class Sample:
    id: str
    image: torch.Tensor  # (3, h, w) in [0, 1]
    label: int


@dataclass
class Batch:
    samples: list[Sample]
    images: torch.Tensor
    index: int  # the batch's position in the epoch


class ToySpec:
    name = "toy-colors"
    choices = CHOICES

    def prompt_for(self, sample: Sample, family: str) -> str:
        return "What colour is the centre?"

    def answer_for(self, sample: Sample) -> str:
        return CHOICES[sample.label]

    def choices_for(self, sample: Sample) -> list[str]:
        return CHOICES

    def choice_texts_for(self, sample: Sample) -> list[str]:
        return CHOICES

    def tse_texts(self) -> list[str]:
        return [f"a photo of something {c}" for c in CHOICES]

    def to_dict(self) -> dict:
        return {"name": self.name, "instruction": "What colour is the centre?", "answer": "{answer}"}

    def label_index(self, sample: Sample) -> int:
        return sample.label

    def tse_text_for(self, sample: Sample) -> str:
        return f"a photo of something {CHOICES[sample.label]}"


class ToyDataset:
    """``n`` random images; the label is the dominant channel of the centre (learnable, noisy)."""

    def __init__(self, n: int = 24, size: int = 20, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(n, 3, size, size, generator=g)
        labels = torch.randint(0, 3, (n,), generator=g)
        c = size // 4
        images[torch.arange(n), labels, c:-c, c:-c] = 1.0
        self.samples = [Sample(f"s{i}", images[i], int(labels[i])) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def toy_batches(dataset, batch_size: int, *, shuffle: bool, seed: int, image_size, start: int = 0,
                epoch: int = 0, num_workers: int = 0, fit: str = "squash",
                resample: str = "bilinear") -> Iterator[Batch]:
    """Mimics ``tvprompt.data.iter_batches``: a seeded per-epoch order, starting at batch ``start``."""
    n = len(dataset)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    else:
        order = list(range(n))
    for b in range(start, (n + batch_size - 1) // batch_size):
        rows = order[b * batch_size : (b + 1) * batch_size]
        samples = [dataset[i] for i in rows]
        images = torch.stack([s.image for s in samples])
        if (fit, resample) == ("squash", "bilinear"):
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                                   align_corners=False)
        else:
            images = fit_images(images, image_size, fit, resample)
        yield Batch(samples, images, b)


class ToyAdapter:
    """A tiny patch encoder + linear 'LLM' over the answer vocabulary; frozen; counts its forwards."""

    family = "toy"

    def __init__(self, seed: int = 0, device: str = "cpu", name: str | None = None,
                 nan_after: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.model_id = f"toy-{seed}"
        self.name = name or self.model_id
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.input_size = (16, 16)
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.5, 0.5, 0.5)
        self.w_enc = (torch.randn(48, 8, generator=g) / 7).to(self.device)
        self.w_proj = (torch.randn(8, 8, generator=g) / 3).to(self.device)
        self.w_head = (torch.randn(8, len(CHOICES), generator=g)).to(self.device)
        self.nan_after = nan_after  # forwards after which the logits turn NaN
        self.forwards = 0
        self.feature_calls = 0

    def preprocess(self, pixels01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels01.to(self.device), size=self.input_size, mode="bilinear", antialias=True,
                          align_corners=False)
        return (x - 0.5) / 0.5

    def _encode(self, pixels01: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(pixels01)
        patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, 16, 48)
        return torch.tanh(patches @ self.w_enc)

    def _forward(self, pixels01: torch.Tensor):
        self.forwards += 1
        enc = self._encode(pixels01)
        proj = enc @ self.w_proj
        logits = proj.mean(dim=1) @ self.w_head
        if self.nan_after is not None and self.forwards > self.nan_after:
            logits = logits * float("nan")
        return enc, proj, logits

    def lm_loss(self, pixels01, prompts, answers):
        return self.lm_loss_with_features(pixels01, prompts, answers)[0]

    def lm_loss_with_features(self, pixels01, prompts, answers, kind="encoder"):
        enc, proj, logits = self._forward(pixels01)
        target = torch.tensor([CHOICES.index(a) for a in answers], device=self.device)
        return F.cross_entropy(logits, target), (enc if kind == "encoder" else proj)

    def vision_features(self, pixels01, kind="encoder"):
        self.feature_calls += pixels01.shape[0]
        enc = self._encode(pixels01)
        return enc if kind == "encoder" else enc @ self.w_proj

    def score_choices(self, pixels01, prompts, choices):
        _, _, logits = self._forward(pixels01)
        logp = logits.log_softmax(-1)
        return logp[:, [CHOICES.index(c) for c in choices]]

    def generate(self, pixels01, prompts, max_new_tokens=16):
        return [CHOICES[i] for i in self._forward(pixels01)[2].argmax(-1).tolist()]


class LinearAdapter(ToyAdapter):
    """lm_loss = mean_b Σ w ⊙ pixels_b: its gradient in δ is ``mask ⊙ w``, whatever δ and the image."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(seed=0)
        self.weight = weight

    def lm_loss_with_features(self, pixels01, prompts, answers, kind="encoder"):
        self.forwards += 1
        loss = (pixels01 * self.weight).sum(dim=(1, 2, 3)).mean()
        return loss, pixels01.flatten(2).transpose(1, 2)  # features = the pixels, (B, H·W, 3)

    def vision_features(self, pixels01, kind="encoder"):
        self.feature_calls += pixels01.shape[0]
        return pixels01.flatten(2).transpose(1, 2)


class ToyGuide:
    """A CLIP-like guide: hashed text embeddings, a linear image embedding; counts encoded texts."""

    model_id = "toy-guide"
    logit_scale = 10.0

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed + 100)
        self.device = torch.device("cpu")
        self.w_img = torch.randn(3 * 4 * 4, 6, generator=g)
        self.text_calls = 0
        self.texts_encoded: list[str] = []

    def encode_text(self, texts):
        self.text_calls += 1
        self.texts_encoded += list(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little")
            rows.append(torch.randn(6, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)

    def encode_image(self, pixels01):
        x = F.adaptive_avg_pool2d(pixels01, 4).flatten(1)
        return F.normalize(x @ self.w_img, dim=-1)
