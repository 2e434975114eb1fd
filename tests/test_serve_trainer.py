"""A job that runs the real trainer (`python -m tvprompt train`): slow, and wired to a tiny model + dataset.

Skipped unless the tree has the train command and these are set:
TVP_SERVE_TEST_SOURCE (model id), TVP_SERVE_TEST_TASK (task name), TVP_SERVE_TEST_DATA (dataset path).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvprompt.client import PromptClient
from tvprompt.prompt import VisualPrompt
from tvprompt.serve.auth import create_token
from tvprompt.serve.db import open_engine, session_factory

from .service_utils import Server, env


@pytest.mark.slow
def test_job_with_the_real_trainer(tmp_path):
    probe = subprocess.run([sys.executable, "-m", "tvprompt", "train", "--help"], capture_output=True, env=env())
    if probe.returncode != 0:
        pytest.skip("this tree has no `tvprompt train` command yet")
    source, task, data = (os.environ.get(f"TVP_SERVE_TEST_{k}") for k in ("SOURCE", "TASK", "DATA"))
    if not (source and task and data):
        pytest.skip("set TVP_SERVE_TEST_SOURCE, TVP_SERVE_TEST_TASK and TVP_SERVE_TEST_DATA to a tiny model, task and dataset")
    data = Path(data).resolve()
    store = tmp_path / "store"
    engine = open_engine(f"sqlite:///{store / 'registry.db'}")
    token = create_token(session_factory(engine), "trainer-test")[1]
    engine.dispose()
    server = Server(tmp_path, settings={"store_dir": str(store), "data_root": str(data.parent)}).start()
    try:
        with PromptClient(server.url, token=token) as client:
            job = client.submit_job(method="vp", sources=[source], task=task, dataset=data.name, steps=2, batch_size=2, seed=0)
            done = client.wait_job(job["id"], timeout=1200, poll_s=1.0)
            assert done["state"] == "succeeded", done
            assert done["step"] is not None and done["prompt_id"]
            pulled = client.pull(done["prompt_id"], tmp_path / "pulled")
            assert VisualPrompt.from_pretrained(pulled).config.task
    finally:
        server.stop()
