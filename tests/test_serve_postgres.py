"""The service on PostgreSQL: a throw-away local server (initdb + pg_ctl) started by the fixture.

Run with ``pytest -m postgres``; skipped when the PostgreSQL server binaries or the psycopg
driver (``pip install 'tvprompt[postgres]'``) are missing, failed instead with
``TVP_REQUIRE_POSTGRES=1`` (CI). As root the server runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tvprompt.client import PromptClient
from tvprompt.serve.archive import pack_dir

from .service_utils import Server, env, free_port, make_prompt

pytestmark = pytest.mark.postgres


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _unavailable(why: str):
    """Skip, or fail where PostgreSQL must be tested (CI sets TVP_REQUIRE_POSTGRES=1)."""
    if os.environ.get("TVP_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL tests required but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def pg_url():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'tvprompt[postgres]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="tvp-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the 'postgres' account
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server")
        runuser = shutil.which("runuser")
        if not runuser:
            _unavailable("running as root without runuser")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "tvp", "--no-sync"], check=True,
                   capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "pg.log"), "-w", "-o", opts, "start"],
                   check=True,
                   capture_output=True)
    try:
        yield f"postgresql://tvp@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgresql(pg_url, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tvprompt", "serve", "token", "create", "--owner", "erin", "--db",
                          pg_url,
                          "--store", str(tmp_path / "store")], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    server = Server(tmp_path,
                    cli_args=["--db", pg_url, "--store", str(tmp_path / "store"), "--log-level", "warning"]).start()
    try:
        src = make_prompt(tmp_path / "p", delta_seed=11, task="pg-task", sources=[{"model_id": "zoo:pg_model"}])
        with PromptClient(server.url, token=token) as client:
            first = client.push(src)
            second = client.push(src)
            assert (first["version"], second["version"]) == (1, 2)
            assert {p["id"] for p in client.list(model="zoo:pg_model")} == {second["id"], first["id"]}
            assert client.list(model="zoo:pg%") == []  # LIKE wildcards in a model id are escaped
            client.pull(first["id"], tmp_path / "pulled")
            assert {p.name: p.read_bytes() for p in (tmp_path / "pulled").iterdir()} == {
                p.name: p.read_bytes() for p in src.iterdir()
            }
            client.delete(second["id"])
        assert httpx.get(f"{server.url}/prompts/{second['id']}").status_code == 404
        import psycopg

        with psycopg.connect(pg_url) as con:
            rows = con.execute("SELECT id, sha256, owner FROM prompts").fetchall()
        assert rows == [(first["id"], first["sha256"], "erin")]
        blob = tmp_path / "store" / "objects" / first["sha256"][:2] / f"{first['sha256']}.zip"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == first["sha256"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_service(pg_url, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app
    from tvprompt.serve.auth import create_token

    root = tmp_path_factory.mktemp("pg-service")
    app = create_app(Settings(store_dir=root / "store", db_url=pg_url, data_root=root, apply_rate_per_minute=1e6,
                              apply_burst=10**6))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.hdr = {"Authorization": f"Bearer {create_token(app.state.ctx.sessions, 'pg-attacker')[1]}"}
        client.root = root
        yield client


def test_hostile_requests_are_4xx_on_postgresql(pg_service, tmp_path):
    """What PostgreSQL refuses (NUL in text, values over a column's length, integers over bigint) never reaches it."""
    for params in ({"task": "a\x00b"}, {"model": "zoo:\x00"}, {"offset": 2**63}, {"offset": 2**64 + 1},
                   {"owner": "o" * 65}):
        r = pg_service.get("/prompts", params=params)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), (params, r.text)
    assert pg_service.get("/prompts", params={"offset": 10**9}).json() == []
    for i, changes in enumerate([{"task": "t" * 200}, {"method": "m" * 40}, {"task": "a\x00b"},
                                 {"sources": [{"model_id": "zoo:\x00"}]}, {"seed": 2**70}]):
        src = make_prompt(tmp_path / f"p{i}", delta_seed=i)
        config = json.loads((src / "prompt_config.json").read_text())
        (src / "prompt_config.json").write_text(json.dumps({**config, **changes}))
        r = pg_service.post("/prompts", files={"file": ("p.zip", pack_dir(src))}, headers=pg_service.hdr)
        assert r.status_code == 400 and "field" in r.json()["detail"], (changes, r.text)
    deep = "[" * 50_000 + "]" * 50_000
    r = pg_service.post("/jobs", content=deep, headers={**pg_service.hdr, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    body = {"method": "vp", "sources": ["zoo:a"], "task": "t\x00", "dataset": "x"}
    assert 400 <= pg_service.post("/jobs", json=body, headers=pg_service.hdr).status_code < 500
    assert pg_service.get("/prompts").status_code == 200


def test_versions_stay_monotonic_under_concurrent_pushes_on_postgresql(pg_service, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = pack_dir(make_prompt(tmp_path / "p", delta_seed=21, task="pg-versions"))

    def push(_):
        r = pg_service.post("/prompts", files={"file": ("p.zip", data)}, headers=pg_service.hdr)
        assert r.status_code == 201, r.text
        return r.json()

    with ThreadPoolExecutor(6) as pool:
        pushed = list(pool.map(push, range(6)))
    assert sorted(p["version"] for p in pushed) == [1, 2, 3, 4, 5, 6]
    latest = max(pushed, key=lambda p: p["version"])
    assert pg_service.delete(f"/prompts/{latest['id']}", headers=pg_service.hdr).status_code == 204
    assert push(0)["version"] == 7  # a deleted version number is never given again


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_on_postgresql(pg_url, tmp_path, mode):
    pytest.importorskip("schemathesis")
    from .fuzz_utils import fuzz_app
    from .test_serve_schemathesis import EXAMPLES, fuzz_target

    app, token = fuzz_target(tmp_path, db_url=pg_url)
    assert fuzz_app(app, token, mode, EXAMPLES) >= 15


def test_uploaded_datasets_and_their_jobs_on_postgresql(pg_url, tmp_path):
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app
    from tvprompt.serve.auth import create_token

    from .service_utils import HERE
    from .test_serve_requests import _manifest_zip, _wait

    app = create_app(Settings(store_dir=tmp_path / "store", db_url=pg_url,
                              train_command=[sys.executable, str(HERE / "fake_trainer.py")]))
    with TestClient(app) as client:
        sessions = app.state.ctx.sessions
        client.tokens = {who: {"Authorization": f"Bearer {create_token(sessions, who)[1]}"}
                         for who in ("pg-ann", "pg-ben")}
        ann, ben = client.tokens["pg-ann"], client.tokens["pg-ben"]
        r = client.post("/datasets", files={"file": ("s.zip", _manifest_zip(4))},
                        data={"name": "pg-colours", "choices": "red,blue"},
                        headers=ann)
        assert r.status_code == 201, r.text
        ds = r.json()["id"]
        assert [d["id"] for d in client.get("/datasets", headers=ann).json()] == [ds]
        assert client.get(f"/datasets/{ds}", headers=ben).status_code == 404
        too_long = client.post("/datasets", files={"file": ("s.zip", _manifest_zip(2))}, data={"name": "x" * 65},
                               headers=ann)
        assert too_long.status_code in (400, 422)
        job = client.post("/jobs", json={"method": "vp", "sources": ["zoo:a"], "dataset_id": ds, "steps": 2},
                          headers=ann).json()
        done = _wait(client, job["id"], who="pg-ann")
        assert done["state"] == "succeeded"
        assert client.get(f"/prompts/{done['prompt_id']}").json()["name"] == "pg-colours"
        assert client.delete(f"/datasets/{ds}", headers=ann).status_code == 204
        assert client.get("/datasets", headers=ann).json() == []
