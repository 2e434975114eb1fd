"""``--preset released``: the released TVP code (transfer_cls.py) step for step, on toy models.

The reference below is written from the released training step, not from tvprompt's code:
flip the original image, resize its shorter side to the inner size (bicubic) and cut the centre,
pad with zeros, add the full-frame noise δ, ``loss = L_LLM + λ1·mean_tokens ‖f(x̃) − f(pad(x))‖
− λ2·mean_b min(s, 100)·cos(img_b, "this is a photo of a {class}")``, then
``δ ← δ − γ·M ⊙ g/(‖g‖ + 1e-10)`` with ``g`` the batch-mean gradient of the whole frame, no
clamp, and γ constant within the (single) epoch.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tvprompt.data.batching import batch_order, iter_batches
from tvprompt.imagefit import crop_resize_size, fit_images
from tvprompt.training.config import resolve_config
from tvprompt.training.loop import train
from tvprompt.training.losses import fca_loss
from tvprompt.training.updates import lr_at, seed_for

from .toy import CHOICES, Sample, ToyAdapter, ToyGuide, ToySpec

torch.set_num_threads(1)
H, P, N, BS = 16, 3, 8, 4
INNER = H - 2 * P


@dataclasses.dataclass
class TemplateSpec(ToySpec):
    """ToySpec whose TSE text is a template (so ``tse_template`` can replace it)."""

    tse_text: str = "a photo of something {answer}"

    def tse_text_for(self, sample):
        return self.tse_text.format(answer=CHOICES[sample.label])

    def tse_texts(self):
        return [self.tse_text.format(answer=c) for c in CHOICES]


class WideDataset:
    """``N`` non-square (20 x 28) images: the crop matters (28 -> 14 wide, centre 10 cut)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        images = torch.rand(N, 3, 20, 28, generator=g)
        labels = torch.randint(0, 3, (N,), generator=g)
        self.samples = [Sample(f"w{i}", images[i], int(labels[i])) for i in range(N)]

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def _released_cfg(**flags):
    base = {"sources": ["toy"], "task": "toy", "data": "toy", "steps": 2, "batch_size": BS, "image_size": H,
            "width": P, "val_split": None, "progress": False, "seed": 5, "guide": "toy-guide"}
    return resolve_config(None, flags={"preset": "released", **base, **flags})


def test_released_preset_sets_every_released_choice():
    cfg = _released_cfg()
    assert cfg.method == "tvp" and cfg.preset == "released"
    assert (cfg.lr, cfg.batch_size, cfg.fca, cfg.tse) == (10.0, BS, 0.005, 0.001)
    assert (cfg.fca_distance, cfg.fca_features, cfg.fca_reference) == ("l2", "projected", "shrunk")
    assert (cfg.grad_norm_over, cfg.lr_schedule, cfg.clamp) == ("frame", "cosine_epoch", False)
    assert (cfg.image_fit, cfg.image_resample) == ("crop", "bicubic")
    assert (cfg.tse_template, cfg.tse_scale_clamp) == ("this is a photo of a {answer}", 100.0)
    assert _released_cfg(fca_distance="squared").fca_distance == "squared"  # a flag still wins


def test_released_preset_refuses_another_method():
    from tvprompt.errors import UsageError

    with pytest.raises(UsageError, match="tvp recipe"):
        resolve_config("evp", flags={"preset": "released"})
    with pytest.raises(UsageError, match="preset"):
        resolve_config(None, flags={"preset": "paper"})


def test_cosine_epoch_is_constant_within_an_epoch_and_steps_per_epoch():
    cfg = _released_cfg()
    assert [lr_at(s, cfg, 6, 6) for s in range(6)] == [10.0] * 6  # one epoch: constant γ
    # three epochs of 2 updates: CosineAnnealingLR(T_max=3) stepped after each epoch
    want = [10.0 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in (0, 0, 1, 1, 2, 2)]
    assert [lr_at(s, cfg, 6, 2) for s in range(6)] == pytest.approx(want)


def test_l2_fca_is_the_mean_per_token_norm_and_has_zero_gradient_at_zero():
    a = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    b = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    assert fca_loss(a, b, "l2").item() == pytest.approx(torch.norm(a - b, dim=-1).mean().item(), rel=1e-6)
    assert fca_loss(a, b, "squared").item() == pytest.approx(0.5 * ((a - b) ** 2).sum(-1).mean().item(), rel=1e-6)
    x = a.clone().requires_grad_()
    fca_loss(x, a, "l2").backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # δ = 0 at the first step: no NaN


def test_crop_fit_is_shorter_side_then_centre_crop():
    assert crop_resize_size(20, 28, (10, 10)) == (10, 14)
    assert crop_resize_size(32, 32, (164, 164)) == (164, 164)
    assert crop_resize_size(375, 500, (164, 164)) == (164, 218)  # torchvision truncates
    img = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    resized = F.interpolate(img, size=(10, 14), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    torch.testing.assert_close(fit_images(img, (10, 10), "crop", "bicubic"), resized[..., :, 2:12], rtol=0, atol=0)
    same = torch.rand(2, 3, 10, 10)
    assert fit_images(same, (10, 10), "crop", "bicubic") is same  # fitting twice changes nothing


def _released_by_hand(data, adapter, guide, steps):
    """The released training loop, written out for ``steps`` updates."""
    mask = torch.ones(3, H, H)
    mask[:, P:-P, P:-P] = 0
    delta = torch.zeros(3, H, H)
    order = [b for b in batch_order(N, BS, shuffle=True, seed=5, epoch=0, drop_last=False)]
    texts = [f"this is a photo of a {c}" for c in CHOICES]
    text_emb = guide.encode_text(texts)
    out = []
    for step in range(steps):
        rows = order[step]
        gen = torch.Generator().manual_seed(seed_for(5, "augment", step, 0))
        flipped = torch.rand((BS, 2), generator=gen)[:, 0] < 0.5  # our flip draws (the released code's are its own)
        originals = torch.stack([data[i].image for i in rows])
        originals = torch.where(flipped[:, None, None, None], originals.flip(-1), originals)  # flip the original
        rh, rw = 10, 14  # Resize(10) of a 20 x 28 image
        resized = F.interpolate(originals, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
        images = resized.clamp(0, 1)[..., :, 2:12]  # CenterCrop(10)
        clean = F.pad(images, (P, P, P, P), "constant", 0)
        noise = delta.repeat(BS, 1, 1, 1).requires_grad_()
        x = clean + noise
        answers = [CHOICES[data[i].label] for i in rows]
        main, prompted_feats = adapter.lm_loss_with_features(x, ["What colour is the centre?"] * BS, answers,
                                                             kind="projected")
        clean_feats = adapter.vision_features(clean, "projected")
        emb = torch.norm(prompted_feats - clean_feats, dim=-1).mean()
        img = guide.encode_image(x)
        sims = min(guide.logit_scale, 100.0) * img @ text_emb[[data[i].label for i in rows]].T
        clip = torch.diag(sims).mean()
        loss = main + 0.005 * emb - 0.001 * clip
        loss.backward()
        g = noise.grad.mean(0)
        delta = delta - (g / (torch.norm(g.view(-1)) + 1e-10) * mask) * 10.0
        out.append(delta.clone())
    return out


def test_train_released_matches_the_released_updates_by_hand():
    data = WideDataset()
    guide = ToyGuide()
    guide.logit_scale = 150.0  # above the released clamp: the cap must bite
    cfg = _released_cfg(tse_form="similarity")
    result = train(cfg, sources=[ToyAdapter(0)], guide=guide, spec=TemplateSpec(), train_set=data,
                   batch_fn=iter_batches)
    hand_guide = ToyGuide()
    hand_guide.logit_scale = 150.0
    want = _released_by_hand(data, ToyAdapter(0), hand_guide, 2)
    steps = [row for row in result.history if "loss" in row]
    assert len(steps) == 2 and [row["lr"] for row in steps] == [10.0, 10.0]
    torch.testing.assert_close(result.delta, want[1], rtol=0, atol=1e-6)
    assert (result.delta < 0).any()  # unbounded: no clamp to [0, 1]
    assert steps[0]["fca"] == 0.0 and steps[1]["fca"] > 0  # pad-only reference: 0 at δ = 0


def test_train_released_first_update_by_hand():
    data = WideDataset()
    guide, hand_guide = ToyGuide(), ToyGuide()
    result = train(_released_cfg(steps=1), sources=[ToyAdapter(0)], guide=guide, spec=TemplateSpec(),
                   train_set=data, batch_fn=iter_batches)
    torch.testing.assert_close(result.delta, _released_by_hand(data, ToyAdapter(0), hand_guide, 1)[0], rtol=0,
                               atol=1e-6)


def test_training_start_says_which_tse_texts_or_that_tse_is_off(caplog):
    import logging

    from .toy import ToyDataset, toy_batches

    caplog.set_level(logging.INFO, logger="tvprompt.training.loop")
    cfg = resolve_config("tvp", flags={"sources": ["toy"], "task": "toy", "data": "toy", "steps": 1, "batch_size": 4,
                                       "image_size": H, "width": P, "val_split": None, "progress": False,
                                       "guide": "toy-guide"})
    train(cfg, sources=[ToyAdapter(0)], guide=ToyGuide(), spec=TemplateSpec(), train_set=ToyDataset(4),
          batch_fn=toy_batches)
    assert "TSE (λ2 0.001): 3 task text(s) from 'a photo of something {answer}'" in caplog.text
    caplog.clear()
    train(dataclasses.replace(cfg, tse=0.0), sources=[ToyAdapter(0)], spec=TemplateSpec(), train_set=ToyDataset(4),
          batch_fn=toy_batches)
    assert "tvp with --tse 0: TSE is off" in caplog.text


def test_released_preset_puts_minigpt4_style_sources_on_the_released_template():
    class Templated(ToyAdapter):
        template = "chat"

        def use_template(self, name):
            self.template = name

    source = Templated(0)
    assert _released_cfg().minigpt4_template == "released"
    train(_released_cfg(steps=1), sources=[source], guide=ToyGuide(), spec=TemplateSpec(), train_set=WideDataset(),
          batch_fn=iter_batches)
    assert source.template == "released"
    other = Templated(0)
    train(_released_cfg(steps=1, minigpt4_template="chat"), sources=[other], guide=ToyGuide(), spec=TemplateSpec(),
          train_set=WideDataset(), batch_fn=iter_batches)
    assert other.template == "chat"
