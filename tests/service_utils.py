"""Helpers for the service tests: tiny prompt directories and a real uvicorn server in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from tvprompt.prompt import VisualPrompt

SRC = str(Path(__file__).resolve().parents[1] / "src")
HERE = Path(__file__).resolve().parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def make_prompt(path: Path, delta_seed: int = 0, **config) -> Path:
    """A prompt directory with a random δ in [0, 1] (a real, valid prompt)."""
    config.setdefault("image_height", 32)
    config.setdefault("image_width", 32)
    config.setdefault("prompt_width", 4)
    config.setdefault("task", "shapes")
    config.setdefault("sources", [{"model_id": "zoo:tiny-llava"}])
    prompt = VisualPrompt(**config)
    with torch.no_grad():
        prompt.delta.copy_(torch.rand(prompt.delta.shape, generator=torch.Generator().manual_seed(delta_seed)))
        prompt.project_()
    return prompt.save_pretrained(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tvp serve`` (or the app built from a settings dict) in a subprocess on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path, settings: dict | None = None, cli_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"server-{self.port}.log"
        if settings is not None:
            cfg = self.workdir / "settings.json"
            cfg.write_text(json.dumps(settings))
            self.cmd = [sys.executable, str(HERE / "serve_app.py"), str(cfg), str(self.port)]
        else:
            self.cmd = [sys.executable, "-m", "tvprompt", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                        *(cli_args or [])]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's life
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
