"""Regional torch.compile of the training path: same gradients as eager, no recompiles per text length.

One compiling test runs in the default suite (tiny LLaVA, CPU inductor); the per-family sweep, the guide,
gradient checkpointing and the end-to-end `tvp train --compile` run are ``slow`` (compiling on a small
CPU takes tens of seconds per model).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from tvprompt.errors import UsageError
from tvprompt.models import compile as regional
from tvprompt.models.hf import pad_sequences
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model, tiny_variants
from tvprompt.prompt import VisualPrompt
from tvprompt.training.config import COMPILE_MODES, TrainConfig

PROMPTS = ["What shape is this?", "How many shapes are there in the picture? Answer with one word."]
ANSWERS = ["circle", "3"]
OTHER_PROMPTS = ["Describe the image. Classify the image. Which shape? Which color? Count the shapes.", "What?"]
OTHER_ANSWERS = ["red square", "no"]
THIRD_PROMPTS = ["Is there a red circle?", "What color is the shape?"]
THIRD_ANSWERS = ["yes", "red"]
CHOICES = ["circle", "red square", "3", "no"]
BATCHES = [(PROMPTS, ANSWERS), (OTHER_PROMPTS, OTHER_ANSWERS), (THIRD_PROMPTS, THIRD_ANSWERS)]  # 3 text lengths


@pytest.fixture(autouse=True)
def fresh_dynamo(one_torch_thread):
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _step(adapter, prompt, images, prompts, answers):
    """FCA-style objective through the adapter: (loss, features, δ gradient)."""
    prompt.delta.grad = None
    loss, feats = adapter.lm_loss_with_features(prompt.apply(images), prompts, answers, kind="encoder")
    (loss + 0.1 * feats.float().square().mean()).backward()
    return loss.detach(), feats.detach(), prompt.delta.grad.clone()


def _layers(config, *names: str) -> int:
    return sum(int(getattr(config, name).num_hidden_layers) for name in names)


# ---------------------------------------------------------------- no compiling
class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])  # nested: not a stack


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block() for _ in range(3)])
        self.mixed = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])  # two classes: not a stack
        self.single = torch.nn.ModuleList([torch.nn.Linear(2, 2)])  # one module: not a stack


def test_repeated_blocks_takes_outermost_same_class_stacks_only():
    net = _Net()
    assert regional.repeated_stacks(net) == [net.layers]
    assert regional.repeated_blocks(net) == list(net.layers)


def test_off_compiles_nothing_and_bad_modes_are_one_line_usage_errors():
    net = _Net()
    assert regional.compile_blocks(net, "off") == 0
    assert all(getattr(b, "_tvp_compiled", None) is None for b in net.layers)
    assert regional.compiled_mode(net) is None
    with pytest.raises(UsageError) as e:
        regional.compile_blocks(net, "fast")
    assert "'fast' is not one of off, default, reduce-overhead, max-autotune" in str(e.value)
    with pytest.raises(UsageError) as e:
        TrainConfig(compile="bogus")
    assert str(e.value).startswith("--compile: 'bogus' is not one of") and "\n" not in str(e.value)
    assert COMPILE_MODES == regional.COMPILE_MODES
    assert TrainConfig(compile="max-autotune").compile == "max-autotune"
    assert "compile" not in TrainConfig(compile="default").hyperparameters()  # runtime only: resume may change it


def test_eager_context_runs_compiled_functions_without_compiling():
    fn = torch.compile(lambda x: x * 2 + 1)
    with regional.eager():
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0))
    assert _graphs() == 0


def test_padding_text_to_a_multiple_changes_no_loss(tmp_path):
    ids, mask = pad_sequences([[5, 6, 7], [8]], 0, "left", multiple=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and mask.sum().item() == 4
    assert pad_sequences([[5] * 5], 0, "right", multiple=4)[0].shape == (1, 8)
    adapter = load_adapter(f"hf:{build_tiny_model('llava', tmp_path / 'm', seed=0)}", device="cpu", dtype="float32")
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    plain = adapter.lm_loss(images, PROMPTS, ANSWERS)
    adapter.text_multiple = 16  # what compile("reduce-overhead") sets
    torch.testing.assert_close(adapter.lm_loss(images, PROMPTS, ANSWERS), plain, atol=1e-5, rtol=1e-5)


def test_a_family_marked_unsupported_warns_and_stays_eager(tmp_path, caplog):
    adapter = load_adapter(f"hf:{build_tiny_model('llava', tmp_path / 'm', seed=0)}", device="cpu", dtype="float32")
    adapter.compile_unsupported = "reason X"
    with caplog.at_level(logging.WARNING, logger="tvprompt.models.hf"):
        assert adapter.compile("default") == 0
    assert "reason X" in caplog.text and adapter.compile_mode is None
    assert regional.compiled_mode(adapter.model) is None
    with pytest.raises(UsageError):
        adapter.compile("fastest")


# ---------------------------------------------------------------- compiling (one fast test)
def _setup(family: str, directory, **overrides):
    """A tiny model of ``family`` (fp32, CPU), two images and a prompt with a non-zero border."""
    model = build_tiny_model(family, directory, seed=0, **overrides)
    adapter = load_adapter(f"hf:{model}", device="cpu", dtype="float32")
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8)
    with torch.no_grad():
        prompt.delta.uniform_(0.2, 0.8, generator=torch.Generator().manual_seed(1))
    return adapter, images, prompt


def test_compiled_llava_matches_eager_and_does_not_recompile_per_text_length(tmp_path):
    adapter, images, prompt = _setup("llava", tmp_path / "m")
    batches = BATCHES
    eager = [_step(adapter, prompt, images, p, a) for p, a in batches]
    scores = adapter.score_choices(prompt.apply(images), PROMPTS, CHOICES)
    text = adapter.generate(prompt.apply(images), PROMPTS, max_new_tokens=3)

    config = adapter.model.config
    assert adapter.compile("default") == _layers(config, "vision_config", "text_config") == 4
    lengths = set()
    for (p, a), (loss, feats, grad) in zip(batches, eager, strict=True):
        lengths.add(adapter._prefix_batch(p, (64, 64)).input_ids.shape[1])
        c_loss, c_feats, c_grad = _step(adapter, prompt, images, p, a)
        torch.testing.assert_close(c_loss, loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c_feats, feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c_grad, grad, atol=1e-7, rtol=1e-4)
        border = prompt.mask[0].bool()
        assert (c_grad.abs().sum(0)[~border] == 0).all() and (c_grad.abs().sum(0)[border] > 0).any()
    assert len(lengths) == 3  # three text lengths went through the compiled blocks ...
    graphs = _graphs()
    assert 0 < graphs <= 2  # ... with one graph per block class (vision, LLM), never recompiled

    # evaluation runs the blocks eagerly: same scores and text, nothing compiled for the KV-cached steps
    torch.testing.assert_close(adapter.score_choices(prompt.apply(images), PROMPTS, CHOICES), scores,
                               atol=1e-5, rtol=1e-5)
    assert adapter.generate(prompt.apply(images), PROMPTS, max_new_tokens=3) == text
    assert _graphs() == graphs


# ---------------------------------------------------------------- slow: every family, the guide, the trainer
VARIANTS = tiny_variants()


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_family_compiles_to_the_eager_gradient(variant, tmp_path):
    name, family, overrides = variant
    adapter, images, prompt = _setup(family, tmp_path / name, **overrides)
    batches = BATCHES
    eager = [_step(adapter, prompt, images, p, a) for p, a in batches]
    scores = adapter.score_choices(prompt.apply(images), PROMPTS, CHOICES)
    count = adapter.compile("default")
    if adapter.compile_unsupported:
        assert count == 0
        return
    assert count == len(regional.repeated_blocks(adapter.model)) >= 4
    graphs = []
    for (p, a), (loss, feats, grad) in zip(batches, eager, strict=True):
        c_loss, c_feats, c_grad = _step(adapter, prompt, images, p, a)
        torch.testing.assert_close(c_loss, loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c_feats, feats, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c_grad, grad, atol=1e-7, rtol=1e-4)
        assert (c_grad.abs().sum(0)[~prompt.mask[0].bool()] == 0).all()
        graphs.append(_graphs())
    # later text lengths recompile each stack at most once in all: a size specialised on the first call
    # (1, or equal to a fixed size of the model) turns symbolic; T5's 1-token decoder inputs, for one
    assert graphs[2] - graphs[0] <= len(regional.repeated_stacks(adapter.model))
    torch.testing.assert_close(adapter.score_choices(prompt.apply(images), PROMPTS, CHOICES), scores,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_guide_compiles_image_tower_path_and_keeps_text_eager(tmp_path):
    from tvprompt.models.guide import build_tiny_guide
    from tvprompt.models.registry import load_guide

    guide = load_guide(f"hf:{build_tiny_guide('clip', tmp_path / 'clip', seed=0)}", device="cpu", dtype="float32")
    pixels = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    texts = guide.encode_text(["a photo of 1 shapes", "a photo of 2 shapes"])
    (guide.encode_image(pixels) @ texts.T).sum().backward()
    grad = pixels.grad.clone()
    config = guide.model.config
    assert guide.compile("default") == _layers(config, "vision_config", "text_config")
    pixels.grad = None
    (guide.encode_image(pixels) @ texts.T).sum().backward()
    torch.testing.assert_close(pixels.grad, grad, atol=1e-7, rtol=1e-4)
    graphs = _graphs()
    torch.testing.assert_close(guide.encode_text(["a photo of 1 shapes", "a photo of 2 shapes"]), texts)
    assert _graphs() == graphs  # text encoding ran eagerly


@pytest.mark.slow
def test_compile_with_gradient_checkpointing_matches_eager(tmp_path):
    directory = build_tiny_model("llava", tmp_path / "m", seed=0)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    grads = []
    for compiled in (False, True):
        adapter = load_adapter(f"hf:{directory}", device="cpu", dtype="float32", gradient_checkpointing=True)
        if compiled:
            assert adapter.compile("default") == 4
        pixels = images.clone().requires_grad_(True)
        adapter.lm_loss(pixels, PROMPTS, ANSWERS).backward()
        grads.append(pixels.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-4)


@pytest.mark.slow
def test_reduce_overhead_pads_text_and_matches_eager_on_cpu(tmp_path):
    """CUDA graphs need a GPU; on the CPU inductor skips them, so this checks the padding and the graphs."""
    directory = build_tiny_model("llava", tmp_path / "m", seed=0)
    adapter = load_adapter(f"hf:{directory}", device="cpu", dtype="float32")
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0), requires_grad=True)
    adapter.lm_loss(images, PROMPTS, ANSWERS).backward()
    grad = images.grad.clone()
    images.grad = None
    assert adapter.compile("reduce-overhead") == 4 and adapter.text_multiple == 16
    adapter.lm_loss(images, PROMPTS, ANSWERS).backward()
    torch.testing.assert_close(images.grad, grad, atol=1e-7, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.ci
def test_train_with_compile_gives_the_eager_prompt(tmp_path):
    from tvprompt.models.guide import build_tiny_guide
    from tvprompt.training.loop import resolve_config, train

    from .tiny_task import write_task

    model = build_tiny_model("llava", tmp_path / "llava", seed=0)
    clip = build_tiny_guide("clip", tmp_path / "clip", seed=0)
    task, data = write_task(tmp_path, majority="1")
    deltas = {}
    for mode in ("off", "default"):
        cfg = resolve_config("tvp", flags={
            "sources": [f"hf:{model}"], "guide": f"hf:{clip}", "task": str(task), "data": str(data),
            "output": str(tmp_path / mode), "steps": 3, "batch_size": 4, "image_size": 64, "width": 8,
            "device": "cpu", "progress": False, "seed": 0, "compile": mode})
        result = train(cfg)
        deltas[mode] = result.delta
        assert result.history[-1]["split"] == "val"  # validation (eager score_choices) ran after compiling
    assert deltas["off"].abs().sum() > 0
    torch.testing.assert_close(deltas["default"], deltas["off"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_train_compile_default_end_to_end(tmp_path, tvp):
    import json

    from tvprompt.models.guide import build_tiny_guide

    from .tiny_task import write_task

    model = build_tiny_model("llava", tmp_path / "llava", seed=0)
    clip = build_tiny_guide("clip", tmp_path / "clip", seed=0)
    task, data = write_task(tmp_path, majority="1")
    r = tvp("train", "--method", "tvp", "--guide", f"hf:{clip}", "--source", f"hf:{model}", "--task", task,
            "--data", data, "--output", tmp_path / "out", "--steps", 3, "--batch-size", 4, "--image-size", 64,
            "--width", 8, "--device", "cpu", "--no-progress", "--compile", "default", timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'out' / 'prompt'}" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["compile"] == "default"
    bad = tvp("train", "--compile", "fastest", "--source", f"hf:{model}")
    assert bad.returncode == 2 and "invalid choice: 'fastest'" in bad.stderr
