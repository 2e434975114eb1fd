"""Load and crash tests against `tvp serve` on 127.0.0.1: concurrent mixed traffic, then kill -9 during uploads."""

from __future__ import annotations

import hashlib
import io
import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tvprompt.imageio import load_image, tensor_to_pil
from tvprompt.prompt import VisualPrompt
from tvprompt.serve.archive import ArchiveLimits, pack_dir, read_archive
from tvprompt.serve.auth import create_token
from tvprompt.serve.db import open_engine, session_factory

from .service_utils import Server, make_prompt


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A running `tvp serve`, two owners' tokens, a pool of distinct prompt archives and a test image."""
    root = tmp_path_factory.mktemp("load")
    store = root / "store"
    engine = open_engine(f"sqlite:///{store / 'registry.db'}")
    sessions = session_factory(engine)
    tokens = {who: create_token(sessions, who)[1] for who in ("alice", "bob")}
    engine.dispose()
    archives = [pack_dir(make_prompt(root / "prompts" / f"p{i}", delta_seed=i, task=f"t{i % 3}")) for i in range(12)]
    image_path = root / "image.png"
    Image.frombytes("RGB", (40, 30),
                    bytes(random.Random(0).randrange(256) for _ in range(40 * 30 * 3))).save(image_path)
    expected_png = {}
    for i in (0, 1):
        prompt = VisualPrompt.from_pretrained(root / "prompts" / f"p{i}")
        buf = io.BytesIO()
        tensor_to_pil(prompt.apply(load_image(image_path)[None],
                                   generator=torch.Generator().manual_seed(0))[0]).save(buf, "PNG")
        expected_png[i] = buf.getvalue()
    server = Server(root, cli_args=["--store", str(store), "--apply-rate", "1000000", "--log-level", "warning"]).start()
    yield {"root": root, "store": store, "server": server, "tokens": tokens, "archives": archives,
           "image": image_path.read_bytes(), "expected_png": expected_png}
    server.stop()


def _consistency(store: Path) -> dict[str, set[str]]:
    """Rows vs files, read straight from disk: the invariants a crash must not break."""
    con = sqlite3.connect(store / "registry.db")
    rows = {r[0]: r[1] for r in con.execute("SELECT id, sha256 FROM prompts")}
    con.close()
    files = {p.stem for p in (store / "objects").glob("*/*.zip")}
    other = {str(p) for p in (store / "objects").rglob("*") if p.is_file() and p.suffix != ".zip"}
    for sha in files:  # every finished file is whole: its name is its content's sha256
        data = (store / "objects" / sha[:2] / f"{sha}.zip").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        read_archive(data, ArchiveLimits())
    return {"rows_without_file": {i for i, s in rows.items() if s not in files},
            "files_without_row": files - set(rows.values()), "temp_files": other}


def mixed_traffic(world, clients: int, seconds: float) -> dict:
    """``clients`` threads of reads, pushes, applies and deletes for ``seconds``; returns counts and errors."""
    url, tokens, archives = world["server"].url, world["tokens"], world["archives"]
    shas = [hashlib.sha256(a).hexdigest() for a in archives]
    setup = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=60)
    apply_ids = {i: setup.post("/prompts", files={"file": ("p.zip", archives[i])}).json()["id"] for i in (0, 1)}
    errors: list[str] = []
    alive: dict[str, str] = {}  # id -> sha256 of its archive
    deleted: set[str] = set()
    ops = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        rng = random.Random(k)
        owner = "alice" if k % 2 else "bob"
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[owner]}"}, timeout=60)
        mine: list[str] = []
        n = 0
        while time.monotonic() < stop:
            op = rng.choice(["list", "get", "download", "push", "push", "apply", "apply", "delete"])
            try:
                if op == "list":
                    r = http.get("/prompts", params={"task": f"t{rng.randrange(3)}"})
                    ok = r.status_code == 200 and isinstance(r.json(), list)
                elif op in ("get", "download") and mine:
                    pid = rng.choice(mine)
                    if op == "get":
                        r = http.get(f"/prompts/{pid}")
                        ok = r.status_code == 200 and r.json()["sha256"] == alive[pid]
                    else:
                        r = http.get(f"/prompts/{pid}/download")
                        ok = r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == alive[pid]
                elif op == "push" or (op in ("get", "download") and not mine):
                    i = rng.randrange(len(archives))
                    r = http.post("/prompts", files={"file": ("p.zip", archives[i])})
                    ok = r.status_code == 201 and r.json()["sha256"] == shas[i]
                    if ok:
                        with lock:
                            alive[r.json()["id"]] = shas[i]
                        mine.append(r.json()["id"])
                elif op == "apply":
                    i = rng.choice((0, 1))
                    r = http.post(f"/prompts/{apply_ids[i]}/apply", files={"image": ("im.png", world["image"])})
                    ok = r.status_code == 200 and r.content == world["expected_png"][i]
                elif op == "delete" and mine:
                    pid = mine.pop(rng.randrange(len(mine)))
                    r = http.delete(f"/prompts/{pid}")
                    ok = r.status_code == 204
                    with lock:
                        alive.pop(pid)
                        deleted.add(pid)
                else:
                    continue
                if not ok:
                    errors.append(f"{op}: HTTP {r.status_code} {r.text[:200]}")
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                errors.append(f"{op}: {type(e).__name__}: {e}")
            n += 1
        with lock:
            ops[0] += n
        http.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # nothing lost, nothing corrupted, nothing resurrected
    for pid, sha in alive.items():
        r = setup.get(f"/prompts/{pid}/download")
        if r.status_code != 200 or hashlib.sha256(r.content).hexdigest() != sha:
            errors.append(f"lost or corrupted prompt {pid}: HTTP {r.status_code}")
    for pid in deleted:
        if setup.get(f"/prompts/{pid}").status_code != 404:
            errors.append(f"deleted prompt {pid} is back")
    setup.close()
    return {"ops": ops[0], "errors": errors, "alive": len(alive), "deleted": len(deleted)}


def test_concurrent_mixed_traffic(world):
    result = mixed_traffic(world, clients=16, seconds=5.0)
    print(f"16 clients x 5 s: {result['ops']} requests, {len(result['errors'])} errors")
    assert result["errors"] == [], result["errors"][:5]
    assert result["ops"] > 50 and result["alive"] > 0 and result["deleted"] > 0, result
    state = _consistency(world["store"])
    assert state == {"rows_without_file": set(), "files_without_row": set(), "temp_files": set()}


@pytest.mark.slow
def test_concurrent_mixed_traffic_long(world):
    """The issue's load test: 32 clients x 30 s."""
    result = mixed_traffic(world, clients=32, seconds=30.0)
    print(f"32 clients x 30 s: {result['ops']} requests, {len(result['errors'])} errors")
    assert result["errors"] == [], result["errors"][:5]
    assert _consistency(world["store"])["rows_without_file"] == set()


def test_kill9_during_uploads_leaves_a_consistent_store(world):
    server, tokens, archives = world["server"], world["tokens"], world["archives"]
    acked: dict[str, str] = {}
    stop = threading.Event()

    def uploader(k: int) -> None:
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=30)
        i = k
        while not stop.is_set():
            i = (i + 1) % len(archives)
            try:
                r = http.post("/prompts", files={"file": ("p.zip", archives[i])}, data={"name": f"crash{k}"})
            except httpx.HTTPError:
                break  # the server is gone
            if r.status_code == 201:
                acked[r.json()["id"]] = r.json()["sha256"]
        http.close()

    threads = [threading.Thread(target=uploader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.kill9()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 3
    # right after the crash: no row points at a missing or partial file (orphan/temp files may exist)
    assert _consistency(world["store"])["rows_without_file"] == set()

    server.start()  # same store and registry; the startup sweep removes temp and unreferenced files
    assert _consistency(world["store"]) == {"rows_without_file": set(), "files_without_row": set(), "temp_files": set()}
    http = httpx.Client(base_url=server.url, timeout=30)
    for pid, sha in acked.items():  # every acknowledged upload survived
        r = http.get(f"/prompts/{pid}/download")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
    versions = {}
    for p in http.get("/prompts", params={"owner": "bob", "limit": 1000}).json():
        versions.setdefault(p["name"], []).append(p["version"])
    http.close()
    for name, vs in versions.items():  # versions stay unique per name
        assert len(vs) == len(set(vs)), name
