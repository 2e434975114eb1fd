"""The trainer on toy components: update rules against hand-computed steps, ensembles, caches, NaN, selection."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tvprompt.errors import UsageError
from tvprompt.prompt import PromptConfig, VisualPrompt
from tvprompt.training.augment import augment
from tvprompt.training.checkpoint import load_checkpoint
from tvprompt.training.loop import (
    NonFiniteLoss,
    lr_at,
    normalized_step,
    resolve_config,
    sgd_momentum_step,
    train,
)
from tvprompt.training.objective import FcaReferences, Objective
from tvprompt.training.updates import seed_for

from .toy import CHOICES, LinearAdapter, ToyAdapter, ToyDataset, ToyGuide, ToySpec, toy_batches

torch.set_num_threads(1)
H, P = 16, 3


def _mask():
    return VisualPrompt(PromptConfig(image_height=H, image_width=H, prompt_width=P)).mask


def _weight(seed=0):
    return torch.randn(3, H, H, generator=torch.Generator().manual_seed(seed)) * 0.01


def _cfg(method, **flags):
    base = {"sources": ["toy"], "task": "toy", "data": "toy", "steps": 2, "batch_size": 4, "image_size": H,
            "width": P, "val_split": None, "progress": False, "seed": 5}
    base.update(flags)
    return resolve_config(method, flags=base)


def _run(cfg, sources, n=8, **kw):
    return train(cfg, sources=sources, spec=ToySpec(), train_set=ToyDataset(n), batch_fn=toy_batches, **kw)


# ---------------------------------------------------------------- pure pieces
def test_lr_at_cosine_constant_and_warmup():
    cfg = _cfg("evp", lr=70.0)
    assert lr_at(0, cfg, 10) == 70.0
    assert lr_at(5, cfg, 10) == pytest.approx(35.0)
    assert lr_at(10, cfg, 10) == pytest.approx(0.0, abs=1e-12)
    cfg = _cfg("evp", lr=2.0, lr_schedule="constant")
    assert [lr_at(s, cfg, 4) for s in range(4)] == [2.0] * 4
    cfg = _cfg("vp", lr=40.0, warmup_steps=4, min_lr=4.0)
    assert [lr_at(s, cfg, 14) for s in range(4)] == [10.0, 20.0, 30.0, 40.0]
    assert lr_at(4, cfg, 14) == 40.0 and lr_at(14, cfg, 14) == pytest.approx(4.0)


def test_normalized_step_normalises_over_the_border_only():
    mask = _mask()
    g = torch.randn(3, H, H, generator=torch.Generator().manual_seed(1))
    g[:, P:-P, P:-P] *= 1000  # huge interior gradient (image content) must not shrink the step
    delta = torch.zeros(3, H, H)
    out = normalized_step(delta, g, mask, 2.0)
    border = g * mask
    torch.testing.assert_close(out, -2.0 * border / border.norm())
    assert (out * mask).norm().item() == pytest.approx(2.0, rel=1e-5)
    assert out[:, P:-P, P:-P].abs().max() == 0
    whole_frame = -2.0 * border / g.norm()  # the released code's step: tiny here
    assert whole_frame.norm() < 0.01 * out.norm()
    assert torch.equal(normalized_step(delta, torch.zeros_like(g), mask, 2.0), delta)


def test_sgd_momentum_step_matches_torch_sgd():
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, 4, generator=g) for _ in range(3)]
    p = torch.zeros(3, 4, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5, momentum=0.9)
    d, buf = torch.zeros(3, 4), torch.zeros(3, 4)
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
        d, buf = sgd_momentum_step(d, gr, buf, 0.5, 0.9)
    torch.testing.assert_close(d, p.detach())


# ---------------------------------------------------------------- presets vs hand-computed steps
def test_vp_preset_two_steps_by_hand():
    w = _weight()
    result = _run(_cfg("vp"), [LinearAdapter(w)])
    m = _mask()
    g = m * w  # d/dδ of mean_b Σ w ⊙ (pad(resize(x)) + m ⊙ δ)
    d1 = (-40.0 * g * m).clamp(0, 1)  # lr_at(0) = 40
    d2 = ((d1 - 20.0 * (0.9 * g + g)) * m).clamp(0, 1)  # lr_at(1) = 20 (cosine over 2 steps)
    torch.testing.assert_close(result.delta, d2, rtol=1e-5, atol=1e-6)
    assert 0 < (d2 > 0).float().mean() < 1  # the steps are not all clipped away


def test_evp_preset_two_steps_by_hand():
    w = _weight(3)
    result = _run(_cfg("evp"), [LinearAdapter(w)])
    m = _mask()
    u = (m * w) / (m * w).norm()
    d1 = (-70.0 * u).clamp(0, 1)
    d2 = ((d1 - 35.0 * u) * m).clamp(0, 1)
    torch.testing.assert_close(result.delta, d2, rtol=1e-5, atol=1e-6)


def _reference_tvp(cfg, w, guide, dataset, steps):
    """Eq. 6 + Eq. 7 written out by hand (autograd only for ∂L/∂δ)."""
    m = _mask()
    delta = torch.zeros(3, H, H)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed * 1000)).tolist()
    spec = ToySpec()
    for step in range(steps):
        samples = [dataset[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        originals = torch.stack([s.image for s in samples])  # square: the crop fit is one bicubic resize
        inner = F.interpolate(originals, size=(H - 2 * P, H - 2 * P), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, "augment", step, 0))
        inner, aug = augment(inner, gen, flip=True)
        base = F.pad(inner, (P, P, P, P))
        d = delta.clone().requires_grad_(True)
        x = base + m * d
        llm = (x * w).sum(dim=(1, 2, 3)).mean()
        fca = torch.linalg.vector_norm(x - base, dim=1).mean()  # features (B, H·W, 3); default l2 per token
        txt = guide.encode_text([spec.tse_text_for(s) for s in samples])
        tse = (guide.logit_scale * (guide.encode_image(x) * txt).sum(-1)).mean()
        loss = llm + cfg.fca * fca - cfg.tse * tse
        (g,) = torch.autograd.grad(loss, d)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        g = g * m
        delta = ((delta - lr * g / g.norm()) * m).clamp(0, 1)
    return delta


def test_tvp_preset_three_steps_by_hand():
    w = _weight(4)
    cfg = _cfg("tvp", steps=3, fca=0.5, tse=0.05, guide="toy-guide")
    assert cfg.update == "normalized" and cfg.lr == 10.0 and cfg.flip
    result = _run(cfg, [LinearAdapter(w)], n=12, guide=ToyGuide())
    expected = _reference_tvp(cfg, w, ToyGuide(), ToyDataset(12), 3)
    torch.testing.assert_close(result.delta, expected, rtol=1e-4, atol=1e-5)
    # FCA and TSE changed the result: without them the δ differs
    plain = _run(_cfg("tvp", steps=3, fca=0.0, tse=0.0), [LinearAdapter(w)], n=12)
    assert (plain.delta - result.delta).abs().max() > 1e-3


# ---------------------------------------------------------------- objective: ensembles, FCA, TSE
def _objective_inputs(n=4):
    data = ToyDataset(n)
    batch = next(toy_batches(data, n, shuffle=False, seed=0, image_size=H))
    images, aug = augment(batch.images, torch.Generator().manual_seed(0), flip=True)
    return batch, images, aug


def test_ensemble_loss_is_mean_of_per_model_losses_each_with_its_own_reference():
    batch, images, aug = _objective_inputs()
    prompt = VisualPrompt(PromptConfig(image_height=H, image_width=H, prompt_width=P))
    with torch.no_grad():
        prompt.delta.uniform_(0, 1, generator=torch.Generator().manual_seed(9))

    def loss_and_grad(adapters):
        obj = Objective(sources=adapters, spec=ToySpec(), fca_weight=0.3, tse_weight=0.0)
        obj.references = [FcaReferences(a, prompt, "encoder", "shrunk", 64) for a in adapters]
        prompt.delta.grad = None
        loss, parts = obj(prompt, images, batch.samples, aug)
        loss.backward()
        return loss.item(), parts, prompt.delta.grad.clone()

    a0, a1 = ToyAdapter(0), ToyAdapter(1)
    l0, p0, g0 = loss_and_grad([ToyAdapter(0)])
    l1, p1, g1 = loss_and_grad([ToyAdapter(1)])
    le, pe, ge = loss_and_grad([a0, a1])
    assert le == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert pe["fca"].item() == pytest.approx((p0["fca"].item() + p1["fca"].item()) / 2, rel=1e-6)
    assert p0["fca"].item() != pytest.approx(p1["fca"].item())
    torch.testing.assert_close(ge, (g0 + g1) / 2)
    assert a0.feature_calls == 4 and a1.feature_calls == 4  # each model its own reference


@pytest.mark.parametrize("kind", ["encoder", "projected"])
def test_fca_is_zero_at_zero_delta_with_shrunk_reference(kind):
    batch, images, aug = _objective_inputs()
    prompt = VisualPrompt(PromptConfig(image_height=H, image_width=H, prompt_width=P))
    adapter = ToyAdapter(0)
    for reference, zero in (("shrunk", True), ("original", False)):
        obj = Objective(sources=[adapter], spec=ToySpec(), fca_weight=1.0, tse_weight=0.0, fca_features=kind)
        obj.references = [FcaReferences(adapter, prompt, kind, reference, 64)]
        _, parts = obj(prompt, images, batch.samples, aug)
        assert (parts["fca"].item() == 0.0) is zero


def test_tse_text_features_computed_once_per_run():
    guide = ToyGuide()
    cfg = _cfg("tvp", steps=5, guide="toy-guide", fca=0.0)
    _run(cfg, [ToyAdapter(0)], n=12, guide=guide)
    assert guide.text_calls == 1
    assert sorted(guide.texts_encoded) == sorted(f"a photo of something {c}" for c in CHOICES)


def test_fca_reference_cache_hits_while_augmentation_is_deterministic():
    cached, fresh = ToyAdapter(0), ToyAdapter(0)
    r1 = _run(_cfg("tvp", steps=12, tse=0.0, fca=0.5), [cached])  # 6 epochs of 8 samples, flips only
    assert cached.feature_calls <= 16  # at most one per (sample, flip)
    r2 = _run(_cfg("tvp", steps=12, tse=0.0, fca=0.5, fca_cache_mb=0.0), [fresh])
    assert fresh.feature_calls == 48
    assert torch.equal(r1.delta, r2.delta)  # the cache changes nothing but the time
    jitter = ToyAdapter(0)
    _run(_cfg("tvp", steps=12, tse=0.0, fca=0.5, jitter_scale=0.1), [jitter])
    assert jitter.feature_calls == 48  # random jitter: never cached


def test_fca_uses_features_from_the_lm_forward():
    adapter = ToyAdapter(0)
    _run(_cfg("tvp", steps=3, tse=0.0, fca=0.5, fca_cache_mb=0.0), [adapter])
    assert adapter.forwards == 3  # one LLM forward per step, no second prompted vision pass
    assert adapter.feature_calls == 12  # the no-grad references only


# ---------------------------------------------------------------- robustness and selection
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg("evp", steps=8, ckpt_every=2, output=str(tmp_path))
    with pytest.raises(NonFiniteLoss, match=r"step 4: the loss or its gradient is not finite.*checkpoint.*step 2"):
        _run(cfg, [ToyAdapter(0, nan_after=3)])
    state, saved, _, _ = load_checkpoint(tmp_path)
    assert state.step == 2 and saved["steps"] == 8
    assert torch.isfinite(state.tensors["delta"]).all()
    assert not (tmp_path / "prompt").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_best_prompt_selected_on_validation_and_stamped(tmp_path):
    cfg = _cfg("evp", steps=6, val_split="val", val_every=2, output=str(tmp_path), lr=30.0)
    result = _run(cfg, [ToyAdapter(0)], val_set=ToyDataset(9, seed=1))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    assert [r["step"] for r in val] == [0, 2, 4, 6]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert all(r["total_steps"] == 6 and {"llm", "fca", "tse", "lr"} <= set(r) for r in train_rows)
    candidates = val[1:]  # the δ = 0 baseline is never selected
    best = max(candidates, key=lambda r: r["accuracy"])
    assert result.best_step == best["step"]
    saved = VisualPrompt.from_pretrained(tmp_path / "prompt")
    last = VisualPrompt.from_pretrained(tmp_path / "last")
    assert torch.equal(last.delta, result.delta)
    assert saved.config.metrics["val_accuracy"] == best["accuracy"]
    assert saved.config.metrics["selected_step"] == best["step"]
    hp = saved.config.hyperparameters
    assert hp["method"] == "evp" and hp["lr"] == 30.0 and hp["update"] == "normalized" and "device" not in hp
    assert saved.config.task == "toy-colors" and saved.config.choices == CHOICES
    assert saved.config.sources[0]["model_id"] == "toy-0"
    assert saved.config.data["train_samples"] == 8 and saved.config.data["val_samples"] == 9


def test_early_stop_after_patience(tmp_path):
    cfg = _cfg("evp", steps=10, val_split="val", val_every=1, early_stop=2, lr=1e-7, output=str(tmp_path))
    result = _run(cfg, [ToyAdapter(0)], val_set=ToyDataset(9, seed=1))
    assert result.step == 3 and result.best_step == 1  # no change -> steps 2 and 3 are not better
    state, _, _, _ = load_checkpoint(tmp_path)
    assert state.step == 3 and state.bad_validations == 2
    again = _run(cfg, [ToyAdapter(0)], val_set=ToyDataset(9, seed=1), resume=True)  # stays stopped
    assert again.step == 3 and torch.equal(again.delta, result.delta)


def test_resume_after_crash_in_process_is_bit_exact(tmp_path):
    def crashing(after):
        def fn(*a, **kw):
            for b in toy_batches(*a, **kw):
                if kw.get("shuffle") and crashing.count >= after:
                    raise RuntimeError("boom")
                crashing.count += kw.get("shuffle", False)
                yield b
        return fn

    crashing.count = 0
    cfg = _cfg("tvp", steps=7, guide="g", ckpt_every=1, grad_accum=2, output=str(tmp_path / "a"))
    full = _run(cfg, [ToyAdapter(0), ToyAdapter(1)], n=10, guide=ToyGuide())
    cfg_b = _cfg("tvp", steps=7, guide="g", ckpt_every=1, grad_accum=2, output=str(tmp_path / "b"))
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg_b, sources=[ToyAdapter(0), ToyAdapter(1)], guide=ToyGuide(), spec=ToySpec(),
              train_set=ToyDataset(10), batch_fn=crashing(7))
    assert load_checkpoint(tmp_path / "b")[0].step == 3
    with pytest.raises(UsageError, match="--resume"):
        _run(cfg_b, [ToyAdapter(0), ToyAdapter(1)], n=10, guide=ToyGuide())
    resumed = _run(cfg_b, [ToyAdapter(0), ToyAdapter(1)], n=10, guide=ToyGuide(), resume=True)
    assert resumed.step == 7
    assert torch.equal(resumed.delta, full.delta)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))


@pytest.mark.parametrize("shape", ["random_patch", "full"])
def test_other_prompt_shapes_train_and_resume_exactly(tmp_path, shape):
    kw = {"shape": shape, "patch_size": 6, "epsilon": 0.2, "steps": 4, "ckpt_every": 1, "fca": 0.5, "tse": 0.0}
    full = _run(_cfg("tvp", output=str(tmp_path / "a"), **kw), [ToyAdapter(0)])
    assert full.delta.abs().sum() > 0
    assert full.history[0]["fca"] == 0.0  # the shrunk reference has the same (random) layout with δ = 0
    if shape == "full":
        assert full.delta.abs().max() <= 0.2 + 1e-7

    def stop_after(n):
        def fn(*a, **k):
            for b in toy_batches(*a, **k):
                if k.get("shuffle") and fn.count >= n:
                    raise RuntimeError("stop")
                fn.count += bool(k.get("shuffle"))
                yield b
        fn.count = 0
        return fn

    cfg = _cfg("tvp", output=str(tmp_path / "b"), **kw)
    with pytest.raises(RuntimeError):
        train(cfg, sources=[ToyAdapter(0)], spec=ToySpec(), train_set=ToyDataset(8), batch_fn=stop_after(2))
    resumed = _run(cfg, [ToyAdapter(0)], resume=True)
    assert torch.equal(resumed.delta, full.delta)


def test_resuming_a_checkpoint_from_before_the_new_options_keeps_its_behaviour(tmp_path):
    """A checkpoint whose config predates fca_distance / image_fit / ... resumes with what it ran with."""
    import json

    cfg = _cfg("tvp", output=str(tmp_path / "old"), steps=2, ckpt_every=1, tse=0.0, fca=0.5,
               fca_distance="squared", image_fit="squash", image_resample="bilinear")
    full = _run(_cfg("tvp", output=str(tmp_path / "full"), steps=2, tse=0.0, fca=0.5, fca_distance="squared",
                     image_fit="squash", image_resample="bilinear"), [ToyAdapter(0)])
    _run(_cfg("tvp", output=str(tmp_path / "old"), steps=1, tse=0.0, fca=0.5, fca_distance="squared",
              image_fit="squash", image_resample="bilinear"), [ToyAdapter(0)])
    state = tmp_path / "old" / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    for key in ("preset", "fca_distance", "grad_norm_over", "image_fit", "image_resample", "tse_template",
                "tse_scale_clamp"):
        del meta["config"][key]
    meta["config"]["steps"] = 2
    state.write_text(json.dumps(meta))
    resumed = _run(cfg, [ToyAdapter(0)], resume=True)
    assert torch.equal(resumed.delta, full.delta)
