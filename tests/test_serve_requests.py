"""Request a prompt for my task: upload a labelled set (+ task spec), train a job on it, get the prompt."""

from __future__ import annotations

import io
import json
import sys
import time
import zipfile

import pytest
import yaml
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tvprompt.serve import Settings, create_app  # noqa: E402
from tvprompt.serve.auth import create_token  # noqa: E402

from .service_utils import HERE  # noqa: E402

MiB = 1 << 20


def _png(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _manifest_zip(n: int = 4, answers=("red", "blue")) -> bytes:
    members, lines = {}, []
    for i in range(n):
        answer = answers[i % len(answers)]
        members[f"pics/{i}.png"] = _png((200, 30, 30) if answer == "red" else (30, 30, 200))
        lines.append(json.dumps({"image": f"pics/{i}.png", "answer": answer}))
    members["manifest.jsonl"] = ("\n".join(lines) + "\n").encode()
    return _zip(members)


def _serve(root, **changes):
    settings = Settings(store_dir=root / "store", train_command=[sys.executable, str(HERE / "fake_trainer.py")],
                        max_upload_bytes=1 * MiB, max_dataset_images=50, **changes)
    return create_app(settings)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("requests")
    app = _serve(root)
    with TestClient(app) as client:
        sessions = app.state.ctx.sessions
        client.root = root
        client.tokens = {who: {"Authorization": f"Bearer {create_token(sessions, who)[1]}"} for who in ("alice", "bob")}
        yield client


def _upload(client, data: bytes, who="alice", **fields):
    fields.setdefault("name", "colours")
    return client.post("/datasets", files={"file": ("set.zip", data)}, data=fields, headers=client.tokens[who])


def test_upload_a_manifest_zip(served):
    r = _upload(served, _manifest_zip(4), instruction="Which colour is this? {choices}", choices="red, blue")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["layout"] == "manifest" and out["images"] == 4 and out["choices"] == ["red", "blue"]
    assert out["splits"] == {"train": 4} and out["owner"] == "alice" and out["name"] == "colours"
    folder = served.root / "store" / "datasets" / out["id"]
    lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    # member names are never paths: images are renamed, the manifest rewritten
    assert [x["image"] for x in lines] == [f"images/{i:05d}.png" for i in range(4)]
    assert [x["answer"] for x in lines] == ["red", "blue", "red", "blue"]
    spec = yaml.safe_load((folder / "task.yaml").read_text())
    assert spec["name"] == "colours" and spec["choices"] == ["red", "blue"]
    assert spec["instruction"] == "Which colour is this? {choices}"
    # the library reads it back as a dataset: same labels
    from tvprompt.data.readers.manifest import ManifestReader

    samples = ManifestReader().read(folder, "train", {}).samples
    assert [s.label for s in samples] == [0, 1, 0, 1]
    assert served.get(f"/datasets/{out['id']}", headers=served.tokens["alice"]).json() == out


def test_upload_a_folder_per_class_zip(served):
    data = _zip({"set/cat/a.png": _png(), "set/cat/b.jpg": _jpeg(), "set/dog/c.png": _png((0, 255, 0))})
    r = _upload(served, data, name="pets")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["layout"] == "folders" and out["images"] == 3 and out["choices"] == ["cat", "dog"]
    folder = served.root / "store" / "datasets" / out["id"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["00000.png", "00001.jpg", "00002.png"]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "fields", "status", "message"),
    [
        (_zip({"../evil.png": _png(), "manifest.jsonl": b""}), {}, 400, "'..' or '.' in a name is not allowed"),
        (_zip({"/abs/a.png": _png()}), {}, 400, "absolute or malformed name"),
        (_zip({"cat/a.png": b"not an image at all", "dog/b.png": _png()}), {}, 400,
         "archive member 'cat/a.png': not an image in an accepted format"),
        (_zip({"cat/a.eps": b"%!PS-Adobe-3.0 EPSF", "dog/b.png": _png()}), {}, 400, "'cat/a.eps': not an image file"),
        (_manifest_zip(4, answers=("red", "green")), {"choices": "red, blue"}, 400,
         "manifest.jsonl:2: label 'green' is not one of the choices (red, blue)"),
        (_zip({"manifest.jsonl": b'{"image": "a.png"}\n', "a.png": _png()}), {}, 400,
         "manifest.jsonl:1: field 'answer' is missing"),
        (_zip({"manifest.jsonl": b'{"image": "gone.png", "answer": "x"}\n'}), {}, 400,
         "image 'gone.png' is not in the archive"),
        (_zip({"a.png": _png(), "b.png": _png()}), {}, 400, "one folder per class"),
        (b"PK not a zip", {}, 400, "upload is not a zip archive"),
        (_manifest_zip(4), {"name": "../x"}, 400, "name '../x'"),
        (_manifest_zip(4), {"instruction": "bad {placeholder}"}, 400, "unknown placeholder"),
        (_manifest_zip(4), {"choices": "red"}, 400, "choices: give 2 to"),
        (b"x" * (1 * MiB + 100_000), {}, 413, "upload is over the limit of 1048576 bytes"),
        (_zip({f"c{i % 2}/{i}.png": _png() for i in range(51)}), {}, 400, "over the limit of 50"),
    ],
    ids=["traversal", "absolute", "not-an-image", "eps", "label-outside-choices", "missing-answer", "missing-image",
         "no-manifest-no-folders", "not-a-zip", "bad-name", "bad-instruction", "one-choice", "too-large", "too-many"],
)
def test_refused_uploads_get_one_line_4xx_and_leave_nothing(served, data, fields, status, message):
    before = sorted(p.name for p in (served.root / "store" / "datasets").iterdir())
    r = _upload(served, data, **fields)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail and "\n" not in detail and str(served.root) not in detail, detail
    assert sorted(p.name for p in (served.root / "store" / "datasets").iterdir()) == before


def test_datasets_are_private_and_deletable(served):
    mine = _upload(served, _manifest_zip(2), name="private").json()["id"]
    alice, bob = served.tokens["alice"], served.tokens["bob"]
    assert served.get(f"/datasets/{mine}").status_code == 401
    assert served.post("/datasets", files={"file": ("s.zip", _manifest_zip(2))}, data={"name": "x"}).status_code == 401
    for call in (served.get, served.delete):
        r = call(f"/datasets/{mine}", headers=bob)
        assert r.status_code == 404 and r.json()["detail"] == f"dataset {mine!r} not found"
    assert mine not in {d["id"] for d in served.get("/datasets", headers=bob).json()}
    assert mine in {d["id"] for d in served.get("/datasets", headers=alice).json()}
    # bob cannot train on it either: it does not exist for him
    r = served.post("/jobs", json={"method": "vp", "sources": ["zoo:a"], "dataset_id": mine}, headers=bob)
    assert r.status_code == 404, r.text
    folder = served.root / "store" / "datasets" / mine
    assert folder.is_dir()
    assert served.delete(f"/datasets/{mine}", headers=alice).status_code == 204
    assert not folder.exists()
    assert served.get(f"/datasets/{mine}", headers=alice).status_code == 404
    assert served.delete(f"/datasets/{mine}", headers=alice).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"dataset_id": "0123456789abcdef", "task": "x"}, "leave it out with dataset_id"),
        ({}, "give either dataset"),
        ({"dataset_id": "0123456789abcdef"}, "dataset '0123456789abcdef' not found"),
        ({"dataset_id": "../../etc"}, "dataset_id"),
    ],
)
def test_job_requests_for_uploads_are_validated(served, body, message):
    r = served.post("/jobs", json={"method": "vp", "sources": ["zoo:a"], **body}, headers=served.tokens["alice"])
    assert 400 <= r.status_code < 500 and message in r.json()["detail"], r.text


def _wait(client, job_id: str, who="alice", timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=client.tokens[who]).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_a_job_trains_on_an_upload_and_registers_the_prompt(served):
    ds = _upload(served, _manifest_zip(6), name="my-colours", choices="red, blue").json()
    alice = served.tokens["alice"]
    r = served.post("/jobs", json={"method": "evp", "sources": ["zoo:a"], "dataset_id": ds["id"], "steps": 4},
                    headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["request"]["dataset_id"] == ds["id"] and job["state"] in ("queued", "running")
    # a dataset in use is not deleted under its job (the fake trainer takes over a second to import torch)
    busy = served.delete(f"/datasets/{ds['id']}", headers=alice)
    assert busy.status_code == 400 and "used by a queued or running job; cancel it first" in busy.json()["detail"]
    done = _wait(served, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["step"] == 4 and done["total_steps"] == 4
    prompt = served.get(f"/prompts/{done['prompt_id']}").json()
    assert prompt["owner"] == "alice" and prompt["name"] == "my-colours" and prompt["task"] == "my-colours"
    assert prompt["config"]["data"] == {"manifest_lines": 6}  # the trainer read the upload's manifest
    assert prompt["metrics"] == {"val_accuracy": 0.5}
    assert served.get(f"/prompts/{done['prompt_id']}/download").headers["content-type"] == "application/zip"


@pytest.mark.slow
def test_a_job_on_an_upload_runs_the_real_trainer_on_a_zoo_model(tmp_path, one_torch_thread):
    app = create_app(Settings(store_dir=tmp_path / "store", allowed_models=["zoo:llava-p8"]))
    with TestClient(app) as client:
        client.tokens = {"alice": {"Authorization": f"Bearer {create_token(app.state.ctx.sessions, 'alice')[1]}"}}
        members = {f"{c}/{i}.png": _png(rgb, (40, 40)) for c, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220)))
                   for i in range(6)}
        ds = _upload(client, _zip(members), name="red-or-blue", instruction="Is the image red or blue?").json()
        r = client.post("/jobs", headers=client.tokens["alice"], json={
            "method": "evp", "sources": ["zoo:llava-p8"], "dataset_id": ds["id"], "steps": 2, "batch_size": 4,
            "seed": 0})
        assert r.status_code == 201, r.text
        done = _wait(client, r.json()["id"], timeout=600)
        assert done["state"] == "succeeded", done
        prompt = client.get(f"/prompts/{done['prompt_id']}").json()
        assert prompt["task"] == "red-or-blue" and prompt["method"] == "evp"
        assert prompt["sources"][0]["model_id"] == "zoo:llava-p8"
        assert 0.0 <= prompt["metrics"]["val_accuracy"] <= 1.0
        refused = client.post("/jobs", headers=client.tokens["alice"], json={
            "method": "evp", "sources": ["hf:someone/else"], "dataset_id": ds["id"]})
        assert refused.status_code == 422 and "not offered by this server" in refused.json()["detail"]


def test_the_upload_route_has_its_body_limit_before_the_body_is_read(served):
    from tvprompt.serve.guard import route_limit

    settings = served.app.state.ctx.settings
    assert route_limit("upload_dataset", settings) == (settings.max_upload_bytes + 64 * 1024,
                                                        "upload is over the limit of 1048576 bytes")
    # an anonymous upload is refused before its body counts; a declared length over the limit, before it is read
    assert served.post("/datasets", content=b"x" * 10,
                       headers={"Content-Type": "multipart/form-data; boundary=b"}).status_code == 401
    r = served.post("/datasets", content=b"x" * 10, headers={**served.tokens["alice"], "Content-Length": str(2 * MiB),
                                                             "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["detail"] == "upload is over the limit of 1048576 bytes"


def test_the_python_client_uploads_trains_and_deletes(served):
    from tvprompt.client import PromptClient, ServiceError

    with PromptClient("http://testserver") as client:
        client._http = TestClient(served.app, headers=served.tokens["alice"])  # the app in-process, alice's token
        ds = client.upload_dataset(_manifest_zip(4), "client-set", instruction="Colour? {choices}",
                                   choices=["red", "blue"])
        assert ds["choices"] == ["red", "blue"] and ds["instruction"] == "Colour? {choices}"
        assert ds["id"] in {d["id"] for d in client.datasets()}
        job = client.submit_job(method="vp", sources=["zoo:a"], dataset_id=ds["id"], steps=2)
        done = client.wait_job(job["id"], timeout=60, poll_s=0.1)
        assert done["state"] == "succeeded" and client.get(done["prompt_id"])["name"] == "client-set"
        client.delete_dataset(ds["id"])
        with pytest.raises(ServiceError) as err:
            client.delete_dataset(ds["id"])
        assert err.value.status == 404
