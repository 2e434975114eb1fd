"""Training jobs: the trainer CLI run as a worker subprocess, watched by one runner thread.

States: queued -> running -> succeeded | failed | cancelled (queued -> cancelled too).
The job's command is ``settings.train_command`` followed by the trainer's stable flags
(``--method --source ... --task --data --output [--guide --steps --batch-size --seed]``),
run in its own process group (so cancel kills the trainer and everything it started),
never through a shell. Progress comes from ``OUTPUT/metrics.jsonl``; on success the prompt
directory (the folder holding ``prompt_config.json``) is registered for the job's owner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from ..errors import TvpError, UsageError
from ..prompt import CONFIG_NAME
from .db import JobRow, utcnow
from .registry import Forbidden, NotFound, Registry, check_name

if TYPE_CHECKING:
    from .datasets import DatasetStore
from .settings import Settings

log = logging.getLogger(__name__)
METHODS = ("vp", "evp", "tvp")
FINAL = ("succeeded", "failed", "cancelled")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}$")
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class _Running:
    proc: subprocess.Popen
    output: Path
    log_file: IO[bytes]
    started: float
    metrics_offset: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    cancel: bool = False


def check_model_id(value: str, allowed: list[str] | None, what: str) -> str:
    if not isinstance(value, str) or not _MODEL_RE.match(value) or ".." in value.split("/"):
        raise UsageError(f"{what} {value!r}: not a model id (letters, digits and _.:/@+- only, no '..')")
    if allowed is not None and value not in allowed:
        raise UsageError(f"{what} {value!r}: not offered by this server (allowed: {', '.join(allowed) or 'none'})")
    return value


def resolve_dataset(data_root: Path | None, manifest: str) -> Path:
    """A manifest path relative to the server's data root; refuses anything outside it."""
    if data_root is None:
        raise UsageError("this server runs no jobs: it was started without a data root (--data-root)")
    if not manifest or manifest.startswith(("/", "\\")) or "\\" in manifest or "\x00" in manifest:
        raise UsageError(f"dataset {manifest!r}: give a manifest path relative to the server's data root")
    if any(part in ("..", "") for part in manifest.split("/")):
        raise UsageError(f"dataset {manifest!r}: '..' and empty parts are not allowed")
    path = (data_root / manifest).resolve()
    if not path.is_relative_to(data_root):
        raise UsageError(f"dataset {manifest!r}: resolves outside the server's data root")
    if not path.exists():
        raise UsageError(f"dataset {manifest!r}: no such manifest on the server")
    return path


def find_prompt_dir(output: Path) -> Path | None:
    """The trainer's prompt directory: OUTPUT/prompt, OUTPUT itself, or the shallowest folder holding the config."""
    for candidate in (output / "prompt", output):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    found = sorted(output.rglob(CONFIG_NAME), key=lambda p: (len(p.parts), str(p)))
    return found[0].parent if found else None


class JobRunner:
    """Starts queued jobs (up to ``max_concurrent_jobs``), follows them, registers their prompts."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker, registry: Registry, datasets: DatasetStore | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.datasets = datasets
        self.sessions = sessions
        self.registry = registry
        self.poll_s = poll_s
        self._running: dict[str, _Running] = {}
        self._cancel_requested: set[str] = set()  # cancelled between being claimed and being registered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        with self.sessions.begin() as s:  # jobs cut off by a previous server exit (e.g. kill -9)
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                if row.pid:
                    _kill_orphan(row.pid, self.settings.jobs_dir / row.id)
                row.state, row.finished_at = "failed", utcnow()
                row.error = "the server stopped while the job was running"
        self._thread = threading.Thread(target=self._loop, name="tvp-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            running = list(self._running.items())
        for job_id, run in running:
            _kill_group(run.proc)
            run.log_file.close()
            self._finish(job_id, "failed", error="the server stopped while the job was running")

    # -------------------------------------------------------------- API
    def submit(self, owner: str, request: dict[str, Any]) -> JobRow:
        s = self.settings
        method = request.get("method")
        if method not in METHODS:
            raise UsageError(f"method {method!r}: use one of {', '.join(METHODS)}")
        sources = request.get("sources") or []
        if not isinstance(sources, list) or not 1 <= len(sources) <= 8:
            raise UsageError("sources: give 1 to 8 source model ids")
        for src in sources:
            check_model_id(src, s.allowed_models, "source")
        if request.get("guide") is not None:
            check_model_id(request["guide"], s.allowed_models, "guide")
        if request.get("dataset_id") is not None:
            self._uploaded(request["dataset_id"], owner)  # another owner's dataset is "not found"
        else:
            task = request.get("task")
            if not isinstance(task, str) or not _TASK_RE.match(task):
                raise UsageError(f"task {task!r}: give a task name (letters, digits, '_', '.', '-')")
            resolve_dataset(s.data_root, request.get("dataset") or "")
        if request.get("name") is not None:
            check_name(request["name"])
        row = JobRow(id=secrets.token_hex(8), owner=owner, state="queued",
                     request_json=json.dumps(request, sort_keys=True))
        with self.sessions.begin() as sess:
            sess.add(row)
        self._wake.set()
        return row

    def list(self, owner: str, limit: int = 100) -> list[JobRow]:
        with self.sessions() as sess:
            q = select(JobRow).where(JobRow.owner == owner).order_by(JobRow.created_at.desc()).limit(limit)
            return list(sess.scalars(q))

    def get(self, job_id: str, owner: str) -> JobRow:
        with self.sessions() as sess:
            row = sess.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        if row.owner != owner:
            raise Forbidden(f"job {job_id!r} belongs to another owner")
        return row

    def cancel(self, job_id: str, owner: str, wait_s: float = 10.0) -> JobRow:
        row = self.get(job_id, owner)
        if row.state in FINAL:
            return row
        with self.sessions.begin() as sess:  # a queued job is cancelled before it ever starts
            sess.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "queued")
                .values(state="cancelled", finished_at=utcnow())
            )
        with self._lock:
            run = self._running.get(job_id)
            if run is not None:
                run.cancel = True
                _kill_group(run.proc, grace_s=0.0)
            else:
                self._cancel_requested.add(job_id)
        deadline = time.monotonic() + wait_s
        self._wake.set()
        while time.monotonic() < deadline:
            row = self.get(job_id, owner)
            if row.state in FINAL:
                return row
            time.sleep(0.05)
        return row

    def _uploaded(self, dataset_id: str, owner: str) -> tuple[Path, Path]:
        if self.datasets is None:
            raise UsageError("this server takes no uploaded datasets")
        return self.datasets.files(dataset_id, owner)

    def _roots(self, job_id: str) -> list[tuple[Path, str]]:
        """Server folders and the names a job's owner sees instead (most specific first)."""
        s = self.settings
        workdir = s.jobs_dir / job_id
        roots = [(workdir / "output", "OUTPUT"), (workdir, "JOB"), (s.jobs_dir, "JOBS"), (s.datasets_dir, "DATASETS"),
                 (s.store_dir, "STORE")]
        if s.data_root is not None:
            roots.insert(0, (s.data_root, "DATA"))
        return roots

    # -------------------------------------------------------------- loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the runner must survive anything one job does
                log.exception("job runner tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            running = list(self._running.items())
        for job_id, run in running:
            self._follow(job_id, run)
        free = self.settings.max_concurrent_jobs - len(self._running)
        if free > 0 and not self._stop.is_set():
            with self.sessions() as sess:
                q = select(JobRow).where(JobRow.state == "queued").order_by(JobRow.created_at).limit(free)
                queued = list(sess.scalars(q))
            for row in queued:
                self._launch(row)

    def _command(self, row: JobRow, output: Path) -> list[str]:
        req = json.loads(row.request_json)
        cmd = [*self.settings.train_command, "--method", req["method"]]
        for src in req["sources"]:
            cmd += ["--source", src]
        if req.get("dataset_id"):
            task, data = self._uploaded(req["dataset_id"], row.owner)
            cmd += ["--task", str(task), "--data", str(data)]
        else:
            cmd += ["--task", req["task"], "--data", str(resolve_dataset(self.settings.data_root, req["dataset"]))]
        if req.get("guide"):
            cmd += ["--guide", req["guide"]]
        for key, flag in (("steps", "--steps"), ("batch_size", "--batch-size"), ("seed", "--seed")):
            if req.get(key) is not None:
                cmd += [flag, str(int(req[key]))]
        return cmd + ["--output", str(output)]

    def _launch(self, row: JobRow) -> None:
        workdir = self.settings.jobs_dir / row.id
        output = workdir / "output"
        workdir.mkdir(parents=True, exist_ok=True)
        with self.sessions.begin() as sess:  # claim it: only a still-queued job starts
            claimed = sess.execute(
                update(JobRow).where(JobRow.id == row.id, JobRow.state == "queued")
                .values(state="running", started_at=utcnow())
            ).rowcount
        if not claimed:
            return
        log_file = open(workdir / "train.log", "wb")  # noqa: SIM115 - closed when the job ends
        try:
            cmd = self._command(row, output)
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                start_new_session=True
            )
        except (OSError, TvpError) as e:
            log_file.close()
            self._finish(row.id, "failed", error=f"could not start the trainer: {e}")
            return
        log.info("job %s started (pid %d): %s", row.id, proc.pid, " ".join(cmd))
        with self.sessions.begin() as sess:
            sess.execute(update(JobRow).where(JobRow.id == row.id).values(pid=proc.pid))
        with self._lock:
            run = _Running(proc=proc, output=output, log_file=log_file, started=time.monotonic())
            self._running[row.id] = run
            if row.id in self._cancel_requested:
                self._cancel_requested.discard(row.id)
                run.cancel = True
                _kill_group(proc, grace_s=0.0)

    def _follow(self, job_id: str, run: _Running) -> None:
        code = run.proc.poll()
        self._read_metrics(job_id, run)
        if code is None:
            if time.monotonic() - run.started > self.settings.job_timeout_s:
                _kill_group(run.proc)
                self._end(job_id, run, "failed", error=f"timed out after {self.settings.job_timeout_s:g} s")
            return
        _kill_group(run.proc, grace_s=0.0)  # stray children of a finished trainer
        if run.cancel:
            self._end(job_id, run, "cancelled")
        elif code != 0:
            self._end(job_id, run, "failed",
                      error=f"trainer exited with code {code}: {_tail(run.output.parent / 'train.log')}")
        else:
            self._register_result(job_id, run)

    def _register_result(self, job_id: str, run: _Running) -> None:
        prompt_dir = find_prompt_dir(run.output)
        if prompt_dir is None:
            self._end(job_id, run, "failed", error=f"trainer succeeded but wrote no {CONFIG_NAME}")
            return
        with self.sessions() as sess:
            row = sess.get(JobRow, job_id)
        req = json.loads(row.request_json)
        try:
            prompt = self.registry.add_dir(prompt_dir, row.owner, req.get("name"))
        except TvpError as e:
            self._end(job_id, run, "failed", error=f"the trained prompt is invalid: {e}")
            return
        self._end(job_id, run, "succeeded", prompt_id=prompt.id)

    def _read_metrics(self, job_id: str, run: _Running) -> None:
        path = run.output / "metrics.jsonl"
        try:
            with open(path, "rb") as fh:
                fh.seek(run.metrics_offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        run.metrics_offset += end + 1
        latest = None
        for line in chunk[: end + 1].splitlines():
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                latest = obj
        if latest is None:
            return
        run.last_metrics = latest
        step = _as_int(latest.get("step"))
        total = _as_int(latest.get("total_steps"))
        progress = min(1.0, step / total) if step is not None and total else None
        with self.sessions.begin() as sess:
            sess.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(step=step, total_steps=total, progress=progress, metrics_json=json.dumps(latest)[:65536])
            )

    def _end(self, job_id: str, run: _Running, state: str, **values: Any) -> None:
        run.log_file.close()
        with self._lock:
            self._running.pop(job_id, None)
        if state == "succeeded":
            values["progress"] = 1.0
        self._finish(job_id, state, pid=None, **values)
        log.info("job %s %s", job_id, state)

    def _finish(self, job_id: str, state: str, **values: Any) -> None:
        if values.get("error"):
            values["error"] = redact_paths(values["error"], self._roots(job_id))
        with self.sessions.begin() as sess:
            sess.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state.not_in(FINAL))
                .values(state=state, finished_at=utcnow(), **values)
            )


_ABS_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"|,;:()<>]+")


def redact_paths(text: str, roots: list[tuple[Path, str]]) -> str:
    """Job errors go to the job's owner: server folders become their names, other absolute paths ``<path>``."""
    for root, name in roots:
        text = re.sub(re.escape(str(root)) + r"(?![\w.-])", name, text)
    return _ABS_PATH.sub("<path>", text)


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_bytes()[-limit:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-5:])


def _kill_group(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGTERM and grace_s <= 0:
            continue
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                # the leader is gone; its group may still hold children
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _kill_orphan(pid: int, workdir: Path) -> None:
    """Kill the process group of a trainer left by a crashed server, if ``pid`` is still that trainer."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return  # gone (or no /proc): nothing to do
    if str(workdir) in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        log.warning("killed the trainer of an interrupted job (pid %d)", pid)
