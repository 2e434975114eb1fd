import json

import numpy as np
import pytest
import torch
from PIL import Image

from tvprompt import VisualPrompt
from tvprompt.imageio import load_image

from .test_imageio import make_mode_images


@pytest.fixture
def prompt_dir(tmp_path):
    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8, task="toy", method="tvp")
    with torch.no_grad():
        prompt.delta.copy_(torch.rand(3, 64, 64))
    prompt.project_()
    return prompt.save_pretrained(tmp_path / "prompt"), prompt


def test_apply_folder_of_mixed_images(tmp_path, prompt_dir, tvp):
    pdir, prompt = prompt_dir
    make_mode_images(tmp_path / "in" / "nested" / "deeper")
    Image.new("RGB", (30, 50), (10, 200, 30)).save(tmp_path / "in" / "top.jpg")
    (tmp_path / "in" / "notes.txt").write_text("ignored: not an image suffix")
    res = tvp("apply", "--prompt", pdir, tmp_path / "in", "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert len(outs) == 11 and "top.png" in outs and "nested/deeper/cmyk.png" in outs
    border = torch.ones(64, 64, dtype=torch.bool)
    border[8:56, 8:56] = False
    expected_border = (prompt.delta.detach() * 255).round() / 255
    for rel in outs:
        out = load_image(tmp_path / "out" / rel)
        assert out.shape == (3, 64, 64)
        assert torch.equal(out[:, border], expected_border[:, border])
    src = load_image(tmp_path / "in" / "top.jpg")
    centre = torch.nn.functional.interpolate(src[None], size=(48, 48), mode="bilinear", antialias=True)[0]
    got = load_image(tmp_path / "out" / "top.png")[:, 8:56, 8:56]
    assert torch.allclose(got, centre, atol=1 / 255 + 1e-6)


def test_apply_refuses_overwrite_then_allows_it(tmp_path, prompt_dir, tvp):
    pdir, _ = prompt_dir
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    assert tvp("apply", "--prompt", pdir, tmp_path / "a.png", "--output", tmp_path / "o").returncode == 0
    res = tvp("apply", "--prompt", pdir, tmp_path / "a.png", "--output", tmp_path / "o")
    assert res.returncode == 1 and "--overwrite" in res.stderr
    assert tvp("apply", "--prompt", pdir, tmp_path / "a.png", "--output", tmp_path / "o", "--overwrite").returncode == 0


def test_bad_input_one_line_error_and_nothing_written_for_it(tmp_path, prompt_dir, tvp):
    pdir, _ = prompt_dir
    (tmp_path / "in").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "in" / "a_good.png")
    (tmp_path / "in" / "b_bad.png").write_bytes(b"definitely not a png")
    res = tvp("apply", "--prompt", pdir, tmp_path / "in", "--output", tmp_path / "o")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    err_lines = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(err_lines) == 1 and "b_bad.png" in err_lines[0]
    assert not (tmp_path / "o" / "b_bad.png").exists()
    leftovers = [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_skip_bad_counts(tmp_path, prompt_dir, tvp):
    pdir, _ = prompt_dir
    (tmp_path / "in").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.jpg").write_bytes(b"nope")
    res = tvp("apply", "--prompt", pdir, tmp_path / "in", "--output", tmp_path / "o", "--skip-bad")
    assert res.returncode == 0 and "skipped 1 bad input" in res.stdout
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["good.png"]


def test_usage_errors_exit_2(tmp_path, prompt_dir, tvp):
    pdir, _ = prompt_dir
    res = tvp("apply", "--prompt", pdir, tmp_path / "missing", "--output", tmp_path / "o")
    assert res.returncode == 2 and "no such file or folder" in res.stderr
    res = tvp("apply", "--prompt", pdir)
    assert res.returncode == 2
    res = tvp("nonsense-command")
    assert res.returncode == 2


def test_bad_prompt_dir_is_data_error(tmp_path, tvp):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    res = tvp("apply", "--prompt", tmp_path, tmp_path / "a.png", "--output", tmp_path / "o")
    assert res.returncode == 1 and "prompt_config.json" in res.stderr and "Traceback" not in res.stderr
    res = tvp("--debug", "apply", "--prompt", tmp_path, tmp_path / "a.png", "--output", tmp_path / "o")
    assert "Traceback" in res.stderr


def test_show_prints_summary_and_renders(tmp_path, prompt_dir, tvp):
    pdir, prompt = prompt_dir
    res = tvp("show", pdir, "--png", tmp_path / "r.png")
    assert res.returncode == 0, res.stderr
    assert "padding 64x64, p=8" in res.stdout and f"{prompt.num_parameters}" in res.stdout
    rendered = load_image(tmp_path / "r.png")
    assert torch.allclose(rendered[:, 20, 20], torch.full((3,), 128 / 255), atol=1 / 255)
    res = tvp("show", pdir, "--json")
    assert json.loads(res.stdout)["task"] == "toy"


def test_import_pth_derives_width(tmp_path, tvp):
    delta = torch.zeros(3, 224, 224)
    delta[:, :30] = torch.randn(3, 30, 224)  # unbounded, like the released code
    delta[:, :, -30:] = 0.5
    torch.save({"perturbation": delta}, tmp_path / "released.pth")
    res = tvp("import-pth", tmp_path / "released.pth", "--output", tmp_path / "p")
    assert res.returncode == 0, res.stderr
    prompt = VisualPrompt.from_pretrained(tmp_path / "p")
    assert prompt.config.prompt_width == 30 and prompt.config.clamp is False
    assert (prompt.config.fit, prompt.config.resample) == ("crop", "bicubic")  # the released image pipeline
    assert torch.equal(prompt.delta.detach(), delta)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"weights": torch.zeros(3, 8, 8)}, "missing key 'perturbation'"),
        ({"perturbation": torch.zeros(5, 5)}, "expected (3, H, W)"),
        ({"perturbation": torch.full((3, 8, 8), float("inf"))}, "NaN or infinite"),
    ],
)
def test_import_pth_bad_files(tmp_path, tvp, payload, message):
    torch.save(payload, tmp_path / "x.pth")
    res = tvp("import-pth", tmp_path / "x.pth", "--output", tmp_path / "p")
    assert res.returncode == 1 and message in res.stderr
    assert not (tmp_path / "p").exists()


def test_import_pth_refuses_pickled_objects(tmp_path, tvp):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"perturbation": Evil()}))
    res = tvp("import-pth", tmp_path / "evil.pth", "--output", tmp_path / "p")
    assert res.returncode == 1 and "pwned" not in res.stdout and "weights-only" in res.stderr


def test_apply_uses_full_size_outputs_for_tiny_inputs(tmp_path, prompt_dir, tvp):
    pdir, _ = prompt_dir
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "tiny.png")
    assert tvp("apply", "--prompt", pdir, tmp_path / "tiny.png", "--output", tmp_path / "o").returncode == 0
    assert Image.open(tmp_path / "o" / "tiny.png").size == (64, 64)


def test_help_and_the_parser_do_not_import_torch():
    """`tvp --help`, `tvp X --help` and argument errors answer without loading torch (0.2 s, not 2 s)."""
    import subprocess
    import sys

    from .conftest import SRC

    code = ("import sys; from tvprompt.cli import build_parser; build_parser(); import tvprompt, tvprompt.data; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-c", "import tvprompt; print(tvprompt.VisualPrompt.__name__)"],
                       env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "VisualPrompt"
