"""The service over real HTTP: a uvicorn server on 127.0.0.1 in a subprocess, shared by this module."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tvprompt.client import PromptClient, ServiceError
from tvprompt.errors import TvpError
from tvprompt.serve.archive import pack_dir

from .service_utils import HERE, Server, env, make_prompt

MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    (root / "data" / "shapes").mkdir(parents=True)
    (root / "data" / "shapes" / "train.jsonl").write_text('{"image": "a.png", "answer": "red"}\n' * 3)
    (root / "secret.jsonl").write_text("outside the data root\n")
    settings = {
        "store_dir": str(root / "store"),
        "data_root": str(root / "data"),
        "train_command": [sys.executable, str(HERE / "fake_trainer.py")],
        "max_concurrent_jobs": 2,
        "max_upload_bytes": 4 * MiB,
        "max_request_bytes": 6 * MiB,
        "apply_rate_per_minute": 1e6,
        "apply_burst": 100000,
    }
    srv = Server(root, settings=settings)
    # alice's token through the CLI (printed once), bob's through the library
    out = subprocess.run(
        [sys.executable, "-m", "tvprompt", "serve", "token", "create", "--owner", "alice", "--store",
         settings["store_dir"]],
        capture_output=True, text=True, env=env(), check=True,
    )
    alice = out.stdout.strip()
    assert alice.startswith("tvp_") and "\n" not in alice and "shown once" in out.stderr
    from tvprompt.serve.auth import create_token
    from tvprompt.serve.db import open_engine, session_factory

    engine = open_engine(f"sqlite:///{root / 'store' / 'registry.db'}")
    rows = engine.connect().exec_driver_sql("SELECT token_hash FROM tokens").fetchall()
    assert rows and all(alice not in r[0] for r in rows)  # stored hashed, never in clear
    sessions = session_factory(engine)
    _, bob = create_token(sessions, "bob")
    revoked_id, revoked = create_token(sessions, "carol")
    from tvprompt.serve.auth import revoke_token

    revoke_token(sessions, revoked_id)
    engine.dispose()
    srv.start()
    srv.root, srv.tokens = root, {"alice": alice, "bob": bob, "revoked": revoked}
    yield srv
    srv.stop()


def _client(server, who=None) -> PromptClient:
    return PromptClient(server.url, token=server.tokens[who] if who else None)


def _upload(server, data: bytes, token: str | None = None, name: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + "/prompts", files={"file": ("p.zip", data)}, data={"name": name} if name else {},
                      headers=headers, timeout=30)


def _count(server) -> int:
    return len(httpx.get(server.url + "/prompts", params={"limit": 1000}).json())


def _store_state(server) -> tuple[set[str], set[str]]:
    import sqlite3

    con = sqlite3.connect(server.root / "store" / "registry.db")
    rows = {r[0] for r in con.execute("SELECT sha256 FROM prompts")}
    con.close()
    files = {p.name for p in (server.root / "store" / "objects").rglob("*") if p.is_file()}
    return rows, files


# --------------------------------------------------------------------------- auth
def test_auth_matrix(server, tmp_path):
    data = pack_dir(make_prompt(tmp_path / "p", delta_seed=3))
    assert _upload(server, data).status_code == 401
    r = _upload(server, data, token="tvp_not-a-real-token")
    assert r.status_code == 401 and r.json() == {"detail": "invalid or revoked token"}
    assert _upload(server, data, token=server.tokens["revoked"]).status_code == 401
    r = httpx.post(server.url + "/prompts", files={"file": ("p.zip", data)}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    r = _upload(server, data, token=server.tokens["alice"], name="auth-test")
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert r.json()["owner"] == "alice"
    assert httpx.get(f"{server.url}/prompts/{pid}").status_code == 200  # reads are public
    assert httpx.delete(f"{server.url}/prompts/{pid}").status_code == 401
    bob = {"Authorization": f"Bearer {server.tokens['bob']}"}
    r = httpx.delete(f"{server.url}/prompts/{pid}", headers=bob)
    assert r.status_code == 403 and "another owner" in r.json()["detail"]
    assert httpx.get(f"{server.url}/prompts/{pid}").status_code == 200
    alice = {"Authorization": f"Bearer {server.tokens['alice']}"}
    assert httpx.delete(f"{server.url}/prompts/{pid}", headers=alice).status_code == 204
    assert httpx.get(f"{server.url}/prompts/{pid}").status_code == 404
    assert httpx.delete(f"{server.url}/prompts/{pid}", headers=alice).status_code == 404
    rows, files = _store_state(server)
    assert {f"{sha}.zip" for sha in rows} == files  # the deleted prompt's file went with its row

    # jobs: token needed, and only the owner sees or cancels a job
    body = {"method": "vp", "sources": ["zoo:a"], "task": "shapes", "dataset": "shapes/train.jsonl", "steps": 2}
    assert httpx.post(server.url + "/jobs", json=body).status_code == 401
    r = httpx.post(server.url + "/jobs", json=body, headers=alice)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert httpx.get(f"{server.url}/jobs/{jid}").status_code == 401
    assert httpx.get(f"{server.url}/jobs/{jid}", headers=bob).status_code == 403
    assert httpx.delete(f"{server.url}/jobs/{jid}", headers=bob).status_code == 403
    assert httpx.get(f"{server.url}/jobs/{jid}", headers=alice).status_code == 200
    assert jid in {j["id"] for j in httpx.get(f"{server.url}/jobs", headers=alice).json()}
    assert jid not in {j["id"] for j in httpx.get(f"{server.url}/jobs", headers=bob).json()}
    _client(server, "alice").wait_job(jid, timeout=60, poll_s=0.1)


# --------------------------------------------------------------------------- bad uploads
def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _weights(delta: torch.Tensor) -> bytes:
    buf = Path(os.environ.get("TMPDIR", "/tmp")) / f"w-{os.getpid()}-{time.monotonic_ns()}.safetensors"
    save_file({"delta": delta}, str(buf))
    data = buf.read_bytes()
    buf.unlink()
    return data


def test_bad_uploads_are_refused_with_json_errors(server, tmp_path):
    good = _files(make_prompt(tmp_path / "p", delta_seed=4))
    nan = torch.rand(3, 32, 32)
    nan[0, 0, 0] = float("nan")
    cases = {
        "not a zip": (b"hello, I am not a zip", 400, "not a zip archive"),
        "not safetensors": (_zip({**good, "prompt.safetensors": b"\x00" * 64}), 400, "not a valid safetensors file"),
        "NaN": (_zip({**good, "prompt.safetensors": _weights(nan)}), 400, "NaN or infinite"),
        "wrong shape": (_zip({**good, "prompt.safetensors": _weights(torch.rand(3, 16, 16))}), 400,
                        r"has shape \(3, 16, 16\)"),
        "bad config": (_zip({**good, "prompt_config.json": b"{not json"}), 400, "prompt_config.json: not valid JSON"),
        "bad field": (_zip({**good, "prompt_config.json": json.dumps(
                            {**json.loads(good["prompt_config.json"]), "shape": "hex"}).encode()}),
                      400, "field 'shape'"),
        "dotdot": (_zip({"prompt_config.json": good["prompt_config.json"],
                         "../prompt.safetensors": good["prompt.safetensors"]}),
                   400, "not allowed"),
        "absolute": (_zip({**good, "/etc/cron.d/x": b"x"}), 400, "malformed"),
        "extra member": (_zip({**good, "evil.py": b"import os"}), 400, "'evil.py' is not allowed"),
        "zip bomb": (_zip({**good, "prompt.safetensors": bytes(100 * MiB)}), 400, "over the limit|zip bomb"),
        "oversize": (os.urandom(5 * MiB), 413, "over the limit of 4194304 bytes"),
        "oversize request": (os.urandom(7 * MiB), 413, f"request body over the limit of {6 * MiB} bytes"),
    }
    before = _count(server)
    for label, (data, status, message) in cases.items():
        r = _upload(server, data, token=server.tokens["alice"])
        assert r.status_code == status, (label, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"detail"}, label
        assert re.search(message, body["detail"]), (label, body)
        assert "Traceback" not in body["detail"]
        assert str(tmp_path) not in body["detail"] and "/tmp" not in body["detail"]

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.zip"\r\n\r\n'
        for _ in range(112):
            yield os.urandom(64 * 1024)
        yield b"\r\n--b--\r\n"

    r = httpx.post(server.url + "/prompts", content=chunked(), timeout=30,
                   headers={"Content-Type": "multipart/form-data; boundary=b",
                            "Authorization": f"Bearer {server.tokens['alice']}"})
    assert r.status_code == 413 and r.json() == {"detail": "upload is over the limit of 4194304 bytes"}
    r = httpx.post(server.url + "/jobs", content=chunked(), timeout=30,  # a route without its own limit
                   headers={"Content-Type": "text/plain", "Authorization": f"Bearer {server.tokens['alice']}"})
    assert r.status_code == 413 and r.json() == {"detail": f"request body over the limit of {6 * MiB} bytes"}
    assert _count(server) == before
    rows, files = _store_state(server)
    assert {f"{sha}.zip" for sha in rows} == files  # nothing half-written, nothing orphaned
    r = _upload(server, _zip(good), token=server.tokens["alice"], name="../etc")
    assert r.status_code == 400 and "name '../etc'" in r.json()["detail"]
    assert httpx.get(server.url + "/prompts/..%2F..%2Fetc").status_code in (404, 422)
    r = httpx.get(server.url + "/prompts/nope")
    assert r.status_code == 404 and r.json() == {"detail": "prompt 'nope' not found"}


# --------------------------------------------------------------------------- round trip
def test_push_list_pull_round_trip_is_bit_exact(server, tmp_path):
    src = make_prompt(tmp_path / "mine", delta_seed=5, task="roundtrip", sources=[{"model_id": "zoo:rt-model"}],
                      method="tvp",
                      metrics={"val_accuracy": 0.75})
    # push through the CLI
    out = subprocess.run([sys.executable, "-m", "tvprompt", "push", server.url, str(src), "--token",
                          server.tokens["bob"],
                          "--name", "rt"], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    pushed = json.loads(out.stdout)
    assert pushed["version"] == 1 and pushed["name"] == "rt"
    # a second push of the same name is version 2 and shares the content-addressed file
    meta2 = _client(server, "bob").push(src, name="rt")
    assert meta2["version"] == 2 and meta2["sha256"] == pushed["sha256"]
    assert [v["version"] for v in meta2["versions"]] == [1, 2]

    listed = _client(server).list(task="roundtrip")
    assert {p["id"] for p in listed} == {pushed["id"], meta2["id"]}
    assert {p["id"] for p in _client(server).list(model="zoo:rt-model")} == {pushed["id"], meta2["id"]}
    assert _client(server).list(model="zoo:rt") == []  # exact model id, not a prefix
    meta = _client(server).get(pushed["id"])
    assert meta["metrics"] == {"val_accuracy": 0.75} and meta["sources"] == [{"model_id": "zoo:rt-model"}]
    assert meta["method"] == "tvp" and meta["format_version"] == 1 and meta["library_version"]
    digest = hashlib.sha256((src / "prompt.safetensors").read_bytes()).hexdigest()
    assert meta["files"]["prompt.safetensors"]["sha256"] == digest

    dst = tmp_path / "pulled"
    out = subprocess.run([sys.executable, "-m", "tvprompt", "pull", server.url, pushed["id"], "--output", str(dst)],
                         capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    assert _files(dst) == _files(src)
    with pytest.raises(TvpError, match="exists; pass overwrite=True"):
        _client(server).pull(pushed["id"], dst)
    with pytest.raises(ServiceError) as err:
        _client(server).pull("missing", tmp_path / "x")
    assert err.value.status == 404 and not (tmp_path / "x").exists()

    png = httpx.get(f"{server.url}/prompts/{pushed['id']}/download", params={"format": "png"})
    assert png.headers["content-type"] == "image/png"
    from tvprompt.prompt import VisualPrompt

    rendered = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    expected = VisualPrompt.from_pretrained(src).render().mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(rendered, expected)


# --------------------------------------------------------------------------- apply
@pytest.mark.parametrize("shape", ["padding", "random_patch", "padding-crop"])
def test_apply_equals_local_tvp_apply(server, tmp_path, shape):
    """Also for a prompt that fits the original image itself (crop + bicubic, the training default)."""
    extra = {"shape": shape, "patch_size": 8, "seed": 7} if shape == "random_patch" else {}
    if shape == "padding-crop":
        extra = {"fit": "crop", "resample": "bicubic"}
    src = make_prompt(tmp_path / "prompt", delta_seed=6, task="apply-test", **extra)
    pid = _client(server, "alice").push(src)["id"]
    rng = np.random.default_rng(0)
    images = {"photo.jpg": Image.fromarray(rng.integers(0, 255, (45, 71, 3), dtype=np.uint8)),
              "icon.png": Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), mode="RGBA")}
    for name, im in images.items():
        im.save(tmp_path / name)
    out = subprocess.run([sys.executable, "-m", "tvprompt", "apply", "--prompt", str(src),
                          *(str(tmp_path / n) for n in images),
                          "--output", str(tmp_path / "local")], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    for name in images:  # random patches: the server seeds per request, the CLI once per run -> compare the first image
        if shape == "random_patch" and name != "photo.jpg":
            continue
        local = (tmp_path / "local" / (Path(name).stem + ".png")).read_bytes()
        remote = _client(server).apply(pid, tmp_path / name)
        assert remote == local  # byte-for-byte the PNG `tvp apply` writes
        assert Image.open(io.BytesIO(remote)).size == (32, 32)
    r = httpx.post(f"{server.url}/prompts/{pid}/apply", files={"image": ("x.png", b"not an image")})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("image: not an image file in an accepted format (PNG, JPEG")
    big = io.BytesIO()
    Image.new("L", (8000, 6000)).save(big, format="PNG")  # 48 MP, small file: the pixel limit refuses it
    r = httpx.post(f"{server.url}/prompts/{pid}/apply", files={"image": ("big.png", big.getvalue())})
    assert r.status_code == 413 and "exceeds the limit of 16000000" in r.json()["detail"]


def test_apply_rate_limit_and_service_defaults(tmp_path):
    """In-process (TestClient): rate limiting, CORS off by default, OpenAPI, JSON 500s without stack traces."""
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app

    app = create_app(Settings(store_dir=tmp_path / "store", apply_rate_per_minute=2, apply_burst=2))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        from tvprompt.serve.auth import create_token

        token = create_token(app.state.ctx.sessions, "dave")[1]
        data = pack_dir(make_prompt(tmp_path / "p", delta_seed=8))
        pid = client.post("/prompts", files={"file": ("p.zip", data)},
                          headers={"Authorization": f"Bearer {token}"}).json()["id"]
        im = io.BytesIO()
        Image.new("RGB", (10, 10)).save(im, format="PNG")
        codes = [client.post(f"/prompts/{pid}/apply",
                             files={"image": ("a.png", im.getvalue())}).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        r = client.post(f"/prompts/{pid}/apply", files={"image": ("a.png", im.getvalue())})
        assert int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
        r = client.get("/prompts", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = client.get("/boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
        with app.state.ctx.sessions() as session:  # the SQLite registry runs in WAL mode
            assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/prompts", "/prompts/{prompt_id}", "/prompts/{prompt_id}/download", "/prompts/{prompt_id}/apply",
                "/jobs", "/jobs/{job_id}"} <= set(paths)
    cors = create_app(Settings(store_dir=tmp_path / "store2", cors_origins=["https://ok.example"]))
    with TestClient(cors) as client:
        r = client.get("/prompts", headers={"Origin": "https://ok.example"})
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        r = client.get("/prompts", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# --------------------------------------------------------------------------- jobs
def test_job_runs_to_completion_and_registers_its_prompt(server, tmp_path):
    client = _client(server, "alice")
    job = client.submit_job(method="tvp", sources=["zoo:a", "zoo:b"], task="shapes", dataset="shapes/train.jsonl",
                            steps=6, seed=3, name="from-job", guide="zoo:clip")
    assert job["state"] in ("queued", "running")
    done = client.wait_job(job["id"], timeout=60, poll_s=0.1)
    assert done["state"] == "succeeded", done
    assert done["step"] == 6 and done["total_steps"] == 6 and done["progress"] == 1.0
    assert done["metrics"] == {"step": 6, "total_steps": 6, "loss": 1 / 6}
    meta = client.get(done["prompt_id"])
    assert meta["owner"] == "alice" and meta["name"] == "from-job" and meta["method"] == "tvp"
    assert meta["sources"] == [{"model_id": "zoo:a"}, {"model_id": "zoo:b"}]
    assert meta["config"]["data"] == {"manifest_lines": 3}  # the trainer read the server-side manifest
    pulled = client.pull(done["prompt_id"], tmp_path / "trained")
    from tvprompt.prompt import VisualPrompt

    assert VisualPrompt.from_pretrained(pulled).config.seed == 3
    im = io.BytesIO()
    Image.new("RGB", (20, 12), (0, 128, 255)).save(im, format="PNG")
    assert Image.open(io.BytesIO(client.apply(done["prompt_id"], im.getvalue()))).size == (32, 32)

    failed = client.wait_job(client.submit_job(method="vp", sources=["zoo:a"], task="fail",
                                               dataset="shapes/train.jsonl")["id"],
                             timeout=60, poll_s=0.1)
    assert failed["state"] == "failed" and "exited with code 3" in failed["error"] and failed["prompt_id"] is None
    # the owner sees what failed, never where the server keeps its files
    assert "reading DATA/shapes/train.jsonl into OUTPUT" in failed["error"], failed["error"]
    assert 'File "<path>"' in failed["error"]
    assert str(server.root) not in failed["error"] and "/tmp" not in failed["error"]


def test_job_cancel_kills_the_process_group(server):
    client = _client(server, "alice")
    job = client.submit_job(method="evp", sources=["zoo:a"], task="spawn", dataset="shapes/train.jsonl", steps=100000)
    out = server.root / "store" / "jobs" / job["id"] / "output"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (client.job(job["id"])["step"] and (out / "child.pid").exists()):
        time.sleep(0.05)
    running = client.job(job["id"])
    assert running["state"] == "running" and 0 < running["progress"] < 1
    pids = [int((out / n).read_text()) for n in ("trainer.pid", "child.pid")]
    cancelled = client.cancel_job(job["id"])
    assert cancelled["state"] == "cancelled" and cancelled["prompt_id"] is None
    time.sleep(0.2)
    for pid in pids:  # the trainer and the child it started are gone
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert client.cancel_job(job["id"])["state"] == "cancelled"  # idempotent
    queued = [client.submit_job(method="vp", sources=["zoo:a"], task="spawn", dataset="shapes/train.jsonl",
                                steps=100000)
              for _ in range(3)]  # two run, one waits (max_concurrent_jobs=2)
    states = [client.cancel_job(j["id"])["state"] for j in reversed(queued)]
    assert states == ["cancelled"] * 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "../secret.jsonl"}, "'..'"),
        ({"dataset": "/etc/passwd"}, "relative to the server's data root"),
        ({"dataset": "shapes/missing.jsonl"}, "no such manifest"),
        ({"sources": ["--output=/etc"]}, "not a model id"),
        ({"task": "a b; rm -rf /"}, "task"),
        ({"method": "sgd"}, "method"),
        ({"steps": 0}, "steps"),
        ({"extra": 1}, "extra"),
    ],
)
def test_job_requests_are_validated(server, change, message):
    body = {"method": "vp", "sources": ["zoo:a"], "task": "shapes", "dataset": "shapes/train.jsonl", **change}
    r = httpx.post(server.url + "/jobs", json=body, headers={"Authorization": f"Bearer {server.tokens['alice']}"})
    assert r.status_code in (400, 422), r.text
    assert message in r.json()["detail"]
