"""A job that runs the real trainer (`python -m tvprompt train`) on a shipped zoo model and
ShapeWorld data; the result is pulled by a client that holds no model, and applied locally."""

import subprocess
import sys

import torch

from tvprompt.client import PromptClient
from tvprompt.imageio import load_image
from tvprompt.prompt import VisualPrompt
from tvprompt.serve.auth import create_token
from tvprompt.serve.db import open_engine, session_factory

from .conftest import run_tvp
from .service_utils import Server, env


def test_job_with_the_real_trainer_then_pull_and_apply(tmp_path):
    data_root = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "tvprompt", "shapeworld", "--task", "shape", "--n", "24",
                           "--output", str(data_root / "sw-shape"), "--split-mix"], capture_output=True, text=True,
                          env=env())
    assert made.returncode == 0, made.stderr
    store = tmp_path / "store"
    engine = open_engine(f"sqlite:///{store / 'registry.db'}")
    token = create_token(session_factory(engine), "trainer-test")[1]
    engine.dispose()
    server = Server(tmp_path, settings={"store_dir": str(store), "data_root": str(data_root)}).start()
    try:
        with PromptClient(server.url, token=token) as client:
            job = client.submit_job(method="evp", sources=["zoo:llava-p8"], task="shapeworld_shape",
                                    dataset="sw-shape", steps=2, batch_size=4, seed=0)
            done = client.wait_job(job["id"], timeout=600, poll_s=0.5)
            assert done["state"] == "succeeded", done
            assert done["step"] is not None and done["prompt_id"]
        # a user with no white-box model: `tvp pull`, then `tvp apply`
        res = run_tvp("pull", server.url, done["prompt_id"], "--output", tmp_path / "pulled")
        assert res.returncode == 0, res.stderr
    finally:
        server.stop()
    prompt = VisualPrompt.from_pretrained(tmp_path / "pulled")
    assert prompt.config.task == "shapeworld_shape" and prompt.config.method == "evp"
    assert prompt.delta.abs().sum() > 0  # two real updates moved the border
    image = next((data_root / "sw-shape" / "images").iterdir())
    res = run_tvp("apply", "--prompt", tmp_path / "pulled", image, "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    out = load_image(tmp_path / "out" / (image.stem + ".png"))
    expected = (prompt.apply(load_image(image)[None])[0].clamp(0, 1) * 255).round() / 255
    assert torch.equal(out, expected)
