"""Small service pieces without a server: rate limiter, dataset paths, prompt discovery, orphan cleanup."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tvprompt.errors import UsageError
from tvprompt.serve.jobs import _kill_orphan, find_prompt_dir, resolve_dataset
from tvprompt.serve.ratelimit import RateLimiter

from .service_utils import make_prompt


def test_rate_limiter_bursts_then_refills():
    now = [0.0]
    limiter = RateLimiter(rate_per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") == pytest.approx(1.0)
    assert limiter.hit("b") == 0.0  # per client
    now[0] = 1.0
    assert limiter.hit("a") == 0.0 and limiter.hit("a") > 0


def test_resolve_dataset_stays_inside_the_data_root(tmp_path):
    root = tmp_path / "data"
    (root / "shapes").mkdir(parents=True)
    (root / "shapes" / "train.jsonl").write_text("{}\n")
    (tmp_path / "outside.jsonl").write_text("{}\n")
    (root / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    assert resolve_dataset(root, "shapes/train.jsonl") == root / "shapes" / "train.jsonl"
    for bad, message in [("../outside.jsonl", "'..'"), ("/etc/passwd", "relative"), ("link.jsonl", "outside"),
                         ("shapes//train.jsonl", "empty"), ("shapes/none.jsonl", "no such manifest")]:
        with pytest.raises(UsageError, match=message):
            resolve_dataset(root, bad)
    with pytest.raises(UsageError, match="--data-root"):
        resolve_dataset(None, "shapes/train.jsonl")


def test_find_prompt_dir_prefers_prompt_then_output_then_shallowest(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert find_prompt_dir(out) is None
    make_prompt(out / "checkpoints" / "deep" / "p")
    make_prompt(out / "best")
    assert find_prompt_dir(out) == out / "best"
    make_prompt(out / "flat")
    for name in ("prompt_config.json", "prompt.safetensors"):
        (out / name).write_bytes((out / "flat" / name).read_bytes())
    assert find_prompt_dir(out) == out
    make_prompt(out / "prompt")
    assert find_prompt_dir(out) == out / "prompt"


def test_orphaned_trainer_is_killed_only_when_it_is_that_jobs_trainer(tmp_path):
    workdir = tmp_path / "jobs" / "abc"
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--output", str(workdir / "output")],
                            start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        time.sleep(0.2)
        _kill_orphan(other.pid, workdir)
        _kill_orphan(mine.pid, workdir)
        assert mine.wait(timeout=10) == -9
        assert other.poll() is None
        _kill_orphan(999_999_999, workdir)  # no such process: nothing happens
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_restart_fails_interrupted_jobs_and_kills_their_trainers(tmp_path):
    from tvprompt.serve.archive import ArchiveLimits
    from tvprompt.serve.db import JobRow, open_engine, session_factory
    from tvprompt.serve.jobs import JobRunner
    from tvprompt.serve.registry import Registry
    from tvprompt.serve.settings import Settings
    from tvprompt.serve.store import PromptStore

    settings = Settings(store_dir=tmp_path / "store")
    sessions = session_factory(open_engine(settings.db_url))
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--output",
                                str(settings.jobs_dir / "j1" / "output")], start_new_session=True)
    cmdline = Path(f"/proc/{trainer.pid}/cmdline")
    deadline = time.monotonic() + 30
    while b"--output" not in cmdline.read_bytes() and time.monotonic() < deadline:  # wait for the exec
        time.sleep(0.05)
    with sessions.begin() as s:
        s.add(JobRow(id="j1", owner="a", state="running", request_json="{}", pid=trainer.pid))
        s.add(JobRow(id="j2", owner="a", state="succeeded", request_json="{}"))
    runner = JobRunner(settings, sessions,
                       Registry(sessions, PromptStore(settings.store_dir), ArchiveLimits(), 1 << 24))
    try:
        runner.start()
        assert trainer.wait(timeout=10) == -9
        with sessions() as s:
            j1, j2 = s.get(JobRow, "j1"), s.get(JobRow, "j2")
        assert (j1.state, j1.error) == ("failed", "the server stopped while the job was running")
        assert j2.state == "succeeded"
    finally:
        runner.stop()
        trainer.kill()
        trainer.wait()
