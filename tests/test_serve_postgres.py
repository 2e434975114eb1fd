"""The service on PostgreSQL: a throw-away local server (initdb + pg_ctl) started by the fixture.

Run with ``pytest -m postgres``; skipped when the PostgreSQL server binaries or the psycopg
driver (``pip install 'tvprompt[postgres]'``) are missing.
"""

from __future__ import annotations

import glob
import hashlib
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

from .service_utils import Server, env, free_port, make_prompt

pytestmark = pytest.mark.postgres


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="tvp-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the 'postgres' account
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "tvp", "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "pg.log"), "-w", "-o", opts, "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql://tvp@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgresql(pg_url, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tvprompt", "serve", "token", "create", "--owner", "erin", "--db", pg_url,
                          "--store", str(tmp_path / "store")], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    server = Server(tmp_path, cli_args=["--db", pg_url, "--store", str(tmp_path / "store"), "--log-level", "warning"]).start()
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
