import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tvprompt import PromptConfig, PromptFileError, UsageError, VisualPrompt
from tvprompt.convert import derive_width


def test_padding_matches_eq2_by_hand():
    # 4x4 image -> resized to (8-2*2)=4x4 (identity), padded by 2, δ added on the border only.
    prompt = VisualPrompt(image_height=8, image_width=8, prompt_width=2)
    with torch.no_grad():
        prompt.delta.copy_(torch.arange(3 * 64, dtype=torch.float32).reshape(3, 8, 8) / 1000)
    x = torch.rand(1, 3, 4, 4)
    out = prompt.apply(x)
    expected = torch.zeros(1, 3, 8, 8)
    expected[:, :, 2:6, 2:6] = x
    border = torch.ones(8, 8, dtype=torch.bool)
    border[2:6, 2:6] = False
    expected[0][:, border] += prompt.delta.detach()[:, border]
    assert torch.equal(out, expected)


def test_padding_resizes_with_antialiased_bilinear():
    prompt = VisualPrompt(image_height=32, image_width=32, prompt_width=4)
    x = torch.rand(2, 3, 50, 70)
    out = prompt.apply(x)
    assert out.shape == (2, 3, 32, 32)
    ref = F.interpolate(x, size=(24, 24), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(out[:, :, 4:28, 4:28], ref)
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))  # δ = 0 at init


@pytest.mark.parametrize("shape", ["padding", "fixed_patch", "random_patch", "full"])
def test_gradient_is_zero_outside_mask(shape):
    prompt = VisualPrompt(shape=shape, image_height=16, image_width=16, prompt_width=3, patch_size=5)
    x = torch.rand(3, 3, 20, 20)
    (prompt.apply(x, generator=torch.Generator().manual_seed(0)) * torch.randn(3, 3, 16, 16)).sum().backward()
    grad = prompt.delta.grad
    assert grad.shape == prompt.config.delta_shape
    outside = (prompt.mask == 0).expand_as(grad)
    assert torch.count_nonzero(grad[outside]) == 0
    assert torch.count_nonzero(grad[~outside]) > 0.9 * (~outside).sum()


def test_padding_mask_counts_border_pixels():
    prompt = VisualPrompt()
    assert prompt.num_parameters == 3 * (224 * 224 - 164 * 164)


def test_project_clamps_and_keeps_interior_zero():
    prompt = VisualPrompt(image_height=16, image_width=16, prompt_width=3)
    with torch.no_grad():
        prompt.delta.copy_(torch.randn(3, 16, 16) * 3)
    prompt.project_()
    d = prompt.delta.detach()
    assert d.min() >= 0 and d.max() <= 1
    assert torch.count_nonzero(d[:, 3:13, 3:13]) == 0
    out = prompt.apply(torch.rand(2, 3, 16, 16))
    assert out.min() >= 0 and out.max() <= 1  # a valid image


def test_no_clamp_reproduces_released_code():
    prompt = VisualPrompt(image_height=16, image_width=16, prompt_width=3, clamp=False)
    with torch.no_grad():
        prompt.delta.fill_(2.0)
    prompt.project_()
    assert prompt.delta.max() == 2.0


def test_full_prompt_bounded_by_epsilon_and_output_valid():
    prompt = VisualPrompt(shape="full", image_height=16, image_width=16, epsilon=0.05)
    with torch.no_grad():
        prompt.delta.fill_(1.0)
    prompt.project_()
    assert torch.allclose(prompt.delta, torch.full_like(prompt.delta, 0.05))
    out = prompt.apply(torch.ones(1, 3, 16, 16))
    assert out.max() <= 1.0


def test_fixed_patch_pastes_top_left():
    prompt = VisualPrompt(shape="fixed_patch", image_height=16, image_width=16, patch_size=4)
    with torch.no_grad():
        prompt.delta.fill_(0.25)
    x = torch.rand(2, 3, 16, 16)
    out = prompt.apply(x)
    assert torch.equal(out[:, :, :4, :4], torch.full((2, 3, 4, 4), 0.25))
    assert torch.equal(out[:, :, 4:], x[:, :, 4:])


def test_random_patch_is_seeded_and_varies_per_image():
    prompt = VisualPrompt(shape="random_patch", image_height=32, image_width=32, patch_size=4)
    with torch.no_grad():
        prompt.delta.fill_(1.0)
    x = torch.zeros(8, 3, 32, 32)
    a = prompt.apply(x, generator=torch.Generator().manual_seed(1))
    b = prompt.apply(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a.sum(dim=(1, 2, 3)) == 3 * 16).all()  # exactly one whole patch per image
    positions = {tuple(torch.nonzero(a[i, 0])[0].tolist()) for i in range(8)}
    assert len(positions) > 1


@pytest.mark.parametrize("shape", ["padding", "fixed_patch", "random_patch", "full"])
def test_save_load_round_trip_is_bit_exact(tmp_path, shape):
    prompt = VisualPrompt(shape=shape, image_height=24, image_width=24, prompt_width=5, patch_size=6,
                          task="demo", method="tvp", metrics={"val/top1": 0.5})
    with torch.no_grad():
        prompt.delta.copy_(torch.rand(prompt.config.delta_shape) * (0.1 if shape == "full" else 1))
    prompt.project_()
    prompt.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "README.md", "preview.png", "prompt.safetensors", "prompt_config.json"]
    loaded = VisualPrompt.from_pretrained(tmp_path / "p")
    assert torch.equal(loaded.delta, prompt.delta)
    assert loaded.config == prompt.config
    saved = json.loads((tmp_path / "p" / "prompt_config.json").read_text())
    assert saved["format_version"] == 1 and "library_version" in saved


def test_save_replaces_existing_directory_whole(tmp_path):
    VisualPrompt(image_height=16, image_width=16, prompt_width=2).save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "stale.txt").write_text("x")
    VisualPrompt(image_height=16, image_width=16, prompt_width=3).save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p" / "stale.txt").exists()
    assert VisualPrompt.from_pretrained(tmp_path / "p").config.prompt_width == 3
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp dirs left behind


@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "p"
    VisualPrompt(image_height=16, image_width=16, prompt_width=2).save_pretrained(d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "prompt_config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "prompt_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "prompt.safetensors").unlink(), "prompt.safetensors: missing"),
        (lambda d: (d / "prompt_config.json").write_text("{nope"), "not valid JSON"),
        (lambda d: _edit_config(d, shape=None), "missing required key 'shape'"),
        (lambda d: _edit_config(d, prompt_width=None), "missing required key 'prompt_width'"),
        (lambda d: _edit_config(d, format_version=99), "newer tvprompt"),
        (lambda d: _edit_config(d, shape="circle"), "field 'shape'"),
        (lambda d: _edit_config(d, prompt_width=8), "field 'prompt_width'"),
        (lambda d: (d / "prompt.safetensors").write_bytes(b"\x00" * 20), "not a valid safetensors file"),
        (lambda d: save_file({"delta": torch.full((3, 16, 16), float("nan"))}, str(d / "prompt.safetensors")),
         "NaN or infinite"),
        (lambda d: save_file({"delta": torch.zeros(3, 8, 8)}, str(d / "prompt.safetensors")), "has shape (3, 8, 8)"),
        (lambda d: save_file({"delta": torch.zeros(3, 16, 16, dtype=torch.float64)}, str(d / "prompt.safetensors")),
         "must be float32"),
        (lambda d: save_file({"other": torch.zeros(3, 16, 16)}, str(d / "prompt.safetensors")),
         "missing tensor 'delta'"),
        (lambda d: save_file({"delta": torch.full((3, 16, 16), 2.0)}, str(d / "prompt.safetensors")),
         "outside [0, 1]"),
    ],
)
def test_bad_prompt_files_are_rejected_with_their_own_message(saved, mutate, message):
    mutate(saved)
    with pytest.raises(PromptFileError) as err:
        VisualPrompt.from_pretrained(saved)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sources": ["hf:llava-hf/llava-1.5-7b-hf"]}, "field 'sources[0]': expected an object"),
        ({"sources": {"model_id": "x"}}, "field 'sources': expected a list"),
        ({"sources": [{"model_id": 7}]}, "field 'sources[0].model_id': expected a string"),
        ({"sources": [{"model_id": "a\u0000b"}]}, "printable"),
        ({"seed": 2**70}, "field 'seed'"),
        ({"seed": -1}, "field 'seed'"),
        ({"seed": 1.5}, "field 'seed': expected an integer"),
        ({"metrics": [0.5]}, "field 'metrics': expected an object"),
        ({"metrics": {"acc": float("nan")}}, "only finite numbers"),
        ({"data": _deep(40)}, "nested deeper"),
        ({"task": ["a"]}, "field 'task': expected a string"),
        ({"task": "t" * 129}, "field 'task'"),
        ({"method": "m\nx"}, "field 'method'"),
        ({"choices": "red"}, "field 'choices'"),
        ({"hyperparameters": "lr=1"}, "field 'hyperparameters'"),
        ({"image_height": 2**20, "image_width": 2**20}, "too large"),
        ({"epsilon": True}, "field 'epsilon'"),
        ({"pixel_range": 1}, "field 'pixel_range'"),
    ],
)
def test_wrongly_typed_config_fields_are_refused_on_load(saved, changes, message):
    _edit_config(saved, **changes)
    with pytest.raises(PromptFileError) as err:
        VisualPrompt.from_pretrained(saved)
    assert message in str(err.value) and "prompt_config.json" in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_deeply_nested_config_json_is_a_prompt_file_error(saved):
    (saved / "prompt_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PromptFileError, match="not valid JSON|nested too deeply"):
        VisualPrompt.from_pretrained(saved)


def test_provenance_fields_written_by_training_still_load(tmp_path):
    config = PromptConfig(task="shapes-color", method="tvp", seed=2**63 - 1, choices=["red", "blue"],
                          sources=[{"model_id": "zoo:tiny-llava", "family": None, "name": "source0"}],
                          metrics={"val_accuracy": 0.5, "selected_step": 3, "steps": 4},
                          hyperparameters={"lr": 1.0, "sources": ["zoo:a"], "schedule": {"warmup": [1, 2]}})
    prompt = VisualPrompt(config, image_height=16, image_width=16, prompt_width=2)
    loaded = VisualPrompt.from_pretrained(prompt.save_pretrained(tmp_path / "p"))
    assert loaded.config == prompt.config


def test_unknown_keys_are_dropped_with_a_warning(saved, caplog):
    _edit_config(saved, future_field=1)
    VisualPrompt.from_pretrained(saved)
    assert "future_field" in caplog.text


def test_bad_config_values_raise_usage_errors():
    with pytest.raises(UsageError, match="prompt_width"):
        PromptConfig(prompt_width=0)
    with pytest.raises(UsageError, match="pixel_range"):
        PromptConfig(pixel_range=[0, 255])


def test_derive_width_from_zero_interior():
    d = torch.zeros(3, 20, 20)
    d[1, 4, 10] = 0.3  # distance 4 from the top edge -> p = 5
    assert derive_width(d) == 5
