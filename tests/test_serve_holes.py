"""Holes an attack on the service found, each closed (in-process app; the uvicorn-level ones run a real server)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import zipfile

import httpx
import pytest
import torch
from PIL import Image

from tvprompt.serve.archive import pack_dir

from .service_utils import Server, make_prompt

MiB = 1 << 20


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app
    from tvprompt.serve.auth import create_token

    root = tmp_path_factory.mktemp("holes")
    (root / "data").mkdir()
    app = create_app(Settings(store_dir=root / "store", data_root=root / "data", max_image_pixels=100_000,
                              max_concurrent_applies=1, max_queued_applies=0, apply_rate_per_minute=1e6,
                              apply_burst=10**6,
                              body_timeout_s=0.5, max_json_bytes=64 * 1024))
    with TestClient(app, raise_server_exceptions=False) as client:
        token = create_token(app.state.ctx.sessions, "mallory")[1]
        client.root, client.app_, client.hdr = root, app, {"Authorization": f"Bearer {token}"}
        yield client


def _png(size=(10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _push(service, directory, name=None):
    return service.post("/prompts", files={"file": ("p.zip", pack_dir(directory))}, data={"name": name} if name else {},
                        headers=service.hdr)


def _store_files(service) -> set[str]:
    return {p.name for p in (service.root / "store" / "objects").rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sources": ["hf:llava-hf/llava-1.5-7b-hf"]}, "sources[0]"),
        ({"seed": 2**70}, "seed"),
        ({"metrics": ["acc", 0.5]}, "metrics"),
        ({"task": {"name": "x"}}, "task"),
        ({"task": "t" * 300}, "task"),
        ({"method": "x\u0000y"}, "method"),
    ],
)
def test_wrongly_typed_config_is_400_and_nothing_is_written(service, tmp_path, changes, field):
    src = make_prompt(tmp_path / "p", delta_seed=1)
    config = json.loads((src / "prompt_config.json").read_text())
    (src / "prompt_config.json").write_text(json.dumps({**config, **changes}))
    before = (len(service.get("/prompts", params={"limit": 1000}).json()), _store_files(service))
    r = _push(service, src)
    assert r.status_code == 400, r.text
    assert f"field '{field}'" in r.json()["detail"] and "prompt_config.json" in r.json()["detail"]
    assert str(tmp_path) not in r.json()["detail"]
    listing = service.get("/prompts", params={"limit": 1000})
    assert listing.status_code == 200  # the listing still works for everyone
    assert (len(listing.json()), _store_files(service)) == before


def test_a_bad_row_from_an_older_server_does_not_break_the_listing(service, tmp_path):
    from tvprompt.serve.db import PromptRow

    pid = _push(service, make_prompt(tmp_path / "p", delta_seed=9, task="legacy-row")).json()["id"]
    with service.app_.state.ctx.sessions.begin() as s:  # what an unvalidated upload left behind before the fix
        row = s.get(PromptRow, pid)
        row.config_json = json.dumps({**json.loads(row.config_json), "sources": ["hf:x", {"model_id": "zoo:y"}],
                                      "metrics": [1]})
    r = service.get("/prompts", params={"task": "legacy-row"})
    assert r.status_code == 200 and r.json()[0]["sources"] == [{"model_id": "zoo:y"}] and r.json()[0]["metrics"] == {}
    assert service.get(f"/prompts/{pid}").status_code == 200
    service.delete(f"/prompts/{pid}", headers=service.hdr)


# --------------------------------------------------------------------------- images
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def test_apply_refuses_formats_outside_the_accepted_list(service, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or Image.new("RGB", (10, 10)))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    pid = _push(service, make_prompt(tmp_path / "p", delta_seed=2, task="eps")).json()["id"]
    r = service.post(f"/prompts/{pid}/apply", files={"image": ("doc.eps", EPS)})
    assert r.status_code == 400 and "not an image file in an accepted format (PNG, JPEG" in r.json()["detail"]
    assert ran == []  # PostScript was never handed to Ghostscript
    assert service.post(f"/prompts/{pid}/apply", files={"image": ("a.png", _png())}).status_code == 200


def test_apply_bounds_pixels_and_concurrency(service, tmp_path):
    pid = _push(service, make_prompt(tmp_path / "p", delta_seed=3, task="gate")).json()["id"]
    r = service.post(f"/prompts/{pid}/apply", files={"image": ("big.png", _png((400, 300)))})
    assert r.status_code == 413
    assert r.json()["detail"] == "image: 400x300 = 120000 pixels exceeds the limit of 100000 (max_image_pixels)"
    gate = service.app_.state.ctx.apply_gate  # 1 running, 0 queued
    with gate.slot():  # another apply holds the only slot
        r = service.post(f"/prompts/{pid}/apply", files={"image": ("a.png", _png())})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
    assert service.post(f"/prompts/{pid}/apply", files={"image": ("a.png", _png())}).status_code == 200


def test_gate_queues_then_refuses():
    from tvprompt.serve.gate import Busy, Gate

    gate = Gate(max_running=1, max_queued=1, timeout_s=5.0)
    order, release = [], threading.Event()

    def hold():
        with gate.slot():
            order.append("first")
            release.wait(5)

    def queued():
        with gate.slot():
            order.append("queued")

    t1 = threading.Thread(target=hold)
    t1.start()
    while not order:
        time.sleep(0.01)
    t2 = threading.Thread(target=queued)
    t2.start()
    time.sleep(0.1)
    with pytest.raises(Busy), gate.slot():  # one running + one waiting: a third is refused at once
        pass
    release.set()
    t1.join(5)
    t2.join(5)
    assert order == ["first", "queued"]
    short = Gate(max_running=1, max_queued=1, timeout_s=0.05)
    with short.slot(), pytest.raises(Busy), short.slot():  # queued, but the wait times out
        pass


# --------------------------------------------------------------------------- request fields and schema
def test_out_of_range_and_control_characters_are_4xx(service):
    for params in ({"offset": 2**63}, {"offset": 10**30}, {"limit": 2**64}, {"task": "a\u0000b"}, {"model": "x\u001f"},
                   {"owner": "\u007f"}):
        r = service.get("/prompts", params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert service.get("/prompts", params={"offset": 10**9}).json() == []


def test_422_bodies_match_the_openapi_schema(service):
    schema = service.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert components["ErrorOut"]["properties"]["detail"]["type"] == "string"
    declared = [op["responses"]["422"] for path in schema["paths"].values() for op in path.values()
                if "422" in op["responses"]]
    assert declared and all(r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
                            for r in declared)
    r = service.post("/jobs", json={"method": "sgd"}, headers=service.hdr)
    assert r.status_code == 422 and set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str)


def test_deep_and_huge_json_are_4xx(service):
    deep = "[" * 50_000 + "]" * 50_000
    r = service.post("/jobs", content=deep, headers={**service.hdr, "Content-Type": "application/json"})
    assert r.status_code in (400, 413, 422) and isinstance(r.json()["detail"], str)
    huge = json.dumps({"method": "vp", "sources": ["zoo:a"], "task": "t", "dataset": "x", "pad": "x" * (128 * 1024)})
    r = service.post("/jobs", content=huge, headers={**service.hdr, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json() == {"detail": f"request body over the limit of {64 * 1024} bytes"}


# --------------------------------------------------------------------------- the token before the body
def _asgi(app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], hang: bool = False):
    """Call the ASGI app directly; returns (status, body, number of body chunks the app pulled)."""
    pulled = []
    sent = []

    async def receive():
        if len(pulled) < len(chunks):
            pulled.append(chunks[len(pulled)])
            more = hang or len(pulled) < len(chunks)
            return {"type": "http.request", "body": pulled[-1], "more_body": more}
        if hang:
            await asyncio.Event().wait()  # a client that stopped sending
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": headers, "client": ("198.51.100.7", 5000),
             "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": "", "state": {}}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=20))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), len(pulled)


def test_token_is_checked_before_the_body_is_read(service):
    chunks = [b"x" * MiB] * 70  # an anonymous 70 MB upload
    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    for extra, detail in [([], "this call needs a token"),
                          ([(b"authorization", b"Bearer tvp_forged")], "invalid or revoked token"),
                          ([(b"authorization", b"Basic x")], "malformed Authorization header")]:
        status, body, pulled = _asgi(service.app_, "POST", "/prompts", headers + extra, chunks)
        assert (status, pulled) == (401, 0) and body["detail"].startswith(detail)
    status, body, pulled = _asgi(service.app_, "POST", "/jobs", [(b"content-type", b"application/json")], [b"{}"] * 3)
    assert (status, pulled) == (401, 0)
    # public routes still read their body
    status, body, pulled = _asgi(service.app_, "POST", "/prompts/nope/apply", headers, [b"--b--\r\n"])
    assert pulled == 1 and status in (400, 404, 422)


def test_a_stalled_body_gets_408(service):
    auth = [(b"authorization", service.hdr["Authorization"].encode()), (b"content-type", b"application/json")]
    t0 = time.monotonic()
    status, body, pulled = _asgi(service.app_, "POST", "/jobs", auth, [b'{"method": '], hang=True)
    assert status == 408 and body == {"detail": "request body not received within 0.5 s"}
    assert pulled == 1 and time.monotonic() - t0 < 5


def test_apply_body_is_limited_to_the_image_size(tmp_path):
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app

    app = create_app(Settings(store_dir=tmp_path / "store", max_image_bytes=1 * MiB))
    with TestClient(app) as client:
        r = client.post("/prompts/abc/apply", files={"image": ("a.png", b"x" * (2 * MiB))})
        assert r.status_code == 413 and r.json()["detail"] == f"image is over the limit of {MiB} bytes"

        def chunked():  # no Content-Length: counted while it streams in
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            for _ in range(40):
                yield b"x" * (64 * 1024)
            yield b"\r\n--b--\r\n"

        r = client.post("/prompts/abc/apply", content=chunked(),
                        headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and r.json()["detail"] == f"image is over the limit of {MiB} bytes"


# --------------------------------------------------------------------------- registry
def test_versions_are_never_reused_after_a_delete(service, tmp_path):
    src = make_prompt(tmp_path / "p", delta_seed=4, task="versions")
    v1, v2 = _push(service, src).json(), _push(service, src).json()
    assert (v1["version"], v2["version"]) == (1, 2)
    assert service.delete(f"/prompts/{v2['id']}", headers=service.hdr).status_code == 204
    v3 = _push(service, src).json()
    assert v3["version"] == 3 and [v["version"] for v in v3["versions"]] == [1, 3]
    for pid in (v1["id"], v3["id"]):
        service.delete(f"/prompts/{pid}", headers=service.hdr)
    assert _push(service, src).json()["version"] == 4  # even after every version is gone


def test_versions_continue_from_a_registry_without_the_counter(tmp_path):
    """A registry written before the counter table: numbering continues after its highest version."""
    from sqlalchemy import delete

    from tvprompt.serve.archive import ArchiveLimits
    from tvprompt.serve.db import NameRow, open_engine, session_factory
    from tvprompt.serve.registry import Registry
    from tvprompt.serve.store import PromptStore

    sessions = session_factory(open_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    registry = Registry(sessions, PromptStore(tmp_path / "store"), ArchiveLimits(), 1 << 24)
    src = make_prompt(tmp_path / "p", delta_seed=5, task="legacy")
    assert [registry.add_dir(src, "o").version for _ in range(2)] == [1, 2]
    with sessions.begin() as s:
        s.execute(delete(NameRow))
    assert registry.add_dir(src, "o").version == 3


def test_zero_full_frame_prompt_is_not_a_zip_bomb(service, tmp_path):
    from tvprompt.prompt import VisualPrompt
    from tvprompt.serve.archive import ArchiveError, ArchiveLimits, read_archive

    src = VisualPrompt(shape="full", image_height=512, image_width=512,
                       task="zero-full").save_pretrained(tmp_path / "z")
    data = pack_dir(src)
    assert (src / "prompt.safetensors").stat().st_size > 3 * MiB and len(data) * 200 < 3 * MiB  # ratio over 200
    r = _push(service, src)
    assert r.status_code == 201, r.text
    assert torch.equal(VisualPrompt.from_pretrained(src).delta, torch.zeros(3, 512, 512))
    # a real bomb still is refused: a large member that compresses far too well, and one that lies about its size
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("prompt_config.json", (src / "prompt_config.json").read_bytes())
        zf.writestr("prompt.safetensors", bytes(48 * MiB))
    with pytest.raises(ArchiveError, match="possible zip bomb"):
        read_archive(buf.getvalue(), ArchiveLimits())


# --------------------------------------------------------------------------- a real server: proxies and slow clients
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    srv = Server(root, settings={"store_dir": str(root / "store"), "apply_rate_per_minute": 0.001, "apply_burst": 2,
                                 "header_timeout_s": 1.0}).start()
    yield srv
    srv.stop()


def test_x_forwarded_for_from_loopback_does_not_pick_the_rate_limit_key(live):
    codes = [httpx.post(f"{live.url}/prompts/none/apply", files={"image": ("a.png", _png())},
                        headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(4)]
    assert codes == [404, 404, 429, 429]  # one client, however many addresses it claims


def test_uvicorn_options_trust_only_the_named_proxies():
    from tvprompt.serve import Settings
    from tvprompt.serve.server import uvicorn_options

    closed = uvicorn_options(Settings())
    assert closed["proxy_headers"] is False and closed["timeout_keep_alive"] == 5.0
    trusted = uvicorn_options(Settings(forwarded_allow_ips=["10.0.0.2", "10.0.0.3"]))
    assert trusted["proxy_headers"] is True and trusted["forwarded_allow_ips"] == "10.0.0.2,10.0.0.3"


def test_half_sent_request_is_dropped(live):
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /prompts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data")  # never finished
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed the connection
        assert time.monotonic() - t0 < 5
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # a normal request is unaffected
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")


def test_tvp_serve_passes_trusted_proxies_and_timeouts_to_uvicorn(tmp_path, monkeypatch):
    import uvicorn

    from tvprompt.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    assert main(["serve", "--store", str(tmp_path / "s"), "--port", "8123"]) == 0
    assert seen["proxy_headers"] is False and seen["port"] == 8123 and seen["timeout_keep_alive"] == 5.0
    assert seen["http"].header_timeout_s == 10.0
    assert main(["serve", "--store", str(tmp_path / "s"), "--forwarded-allow-ips", "10.0.0.2, 10.0.0.3"]) == 0
    assert seen["proxy_headers"] is True and seen["forwarded_allow_ips"] == "10.0.0.2,10.0.0.3"
