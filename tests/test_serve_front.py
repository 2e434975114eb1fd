"""The web front without a browser: offline API docs, the security scheme, the page's headers, ask."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tvprompt.errors import UsageError  # noqa: E402
from tvprompt.serve import Settings, create_app  # noqa: E402
from tvprompt.serve.archive import pack_dir  # noqa: E402
from tvprompt.serve.ask import ModelHost, QueueFull, make_question  # noqa: E402
from tvprompt.serve.auth import create_token  # noqa: E402
from tvprompt.serve.web import CSP  # noqa: E402

from .service_utils import make_prompt  # noqa: E402

CHOICES = ["circle", "square", "triangle"]


def _png(color=(200, 30, 30), size=(64, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("front")
    settings = Settings(store_dir=root / "store", hosted_models=["zoo:llava-p8"], ask_rate_per_minute=1e6,
                        ask_burst=10_000)
    app = create_app(settings)
    with TestClient(app) as client:
        _, token = create_token(app.state.ctx.sessions, "alice")
        prompt_dir = make_prompt(root / "p", image_height=48, image_width=48, prompt_width=6, choices=CHOICES,
                                 templates={"instruction": "Q: {question} A:", "answer": "{answer}"})
        r = client.post("/prompts", files={"file": ("p.zip", pack_dir(prompt_dir))},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        client.app_state = app.state
        client.prompt_id = r.json()["id"]
        yield client


def test_docs_load_their_assets_from_this_server(served):
    for path, assets in [("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])]:
        r = served.get(path)
        assert r.status_code == 200
        html = r.text
        assert not re.search(r"(src|href)=[\"']https?://", html), f"{path} still loads from a CDN"
        assert "fonts.googleapis" not in html
        for name in assets:
            assert f"/docs-assets/{name}" in html
            asset = served.get(f"/docs-assets/{name}")
            assert asset.status_code == 200 and len(asset.content) > 100_000
        csp = r.headers["content-security-policy"]
        for script in re.findall(r"<script>(.*?)</script>", html, re.S):  # inline scripts are allowed by hash only
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert served.get("/docs-assets/..%2Fcore.py").status_code == 404
    assert served.get("/docs-assets/core.py").status_code == 404


def test_openapi_declares_the_bearer_scheme_where_a_token_is_read(served):
    schema = served.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"]}
    paths = schema["paths"]
    required = [{"bearer": []}]
    optional = [{}, {"bearer": []}]
    assert paths["/prompts"]["post"]["security"] == required
    assert paths["/prompts/{prompt_id}"]["delete"]["security"] == required
    for method in ("get", "post"):
        assert paths["/jobs"][method]["security"] == required
    assert paths["/jobs/{job_id}"]["get"]["security"] == required
    assert paths["/prompts/{prompt_id}/apply"]["post"]["security"] == optional
    assert paths["/prompts/{prompt_id}/ask"]["post"]["security"] == optional
    for public in (paths["/prompts"]["get"], paths["/prompts/{prompt_id}"]["get"], paths["/health"]["get"]):
        assert "security" not in public
    assert "/" not in paths and "/docs" not in paths  # the page and docs are not API operations


def test_the_page_and_its_files_carry_a_strict_csp(served):
    r = served.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe" not in CSP and "default-src 'none'" in CSP
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), "inline scripts would be blocked by the CSP"
    assert not re.search(r"\son[a-z]+=", r.text), "inline handlers would be blocked by the CSP"
    js = served.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert ".innerHTML" not in js.text and "document.cookie" not in js.text and "localStorage" not in js.text
    assert "sessionStorage" in js.text and "Authorization" in js.text
    assert served.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert served.get("/static/secret.py").status_code == 404


def test_models_lists_the_hosted_models(served):
    assert served.get("/models").json() == [{"id": "zoo:llava-p8", "name": "llava-p8", "family": "llava"}]


def test_ask_scores_the_choices_with_and_without_the_prompt(served):
    host = served.app_state.host
    adapter = host.adapters[0]
    r = served.post(f"/prompts/{served.prompt_id}/ask", files={"image": ("a.png", _png())},
                    data={"question": "What shape is in the image?"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"] == CHOICES  # the prompt's task choices by default
    [answer] = out["answers"]
    assert answer["model"] == "zoo:llava-p8"
    # the same numbers as a direct score_choices call on the clean and the prompted image
    registry = served.app_state.ctx.registry
    prompt = registry.load(registry.get(served.prompt_id))
    from tvprompt.imageio import pil_to_tensor

    image = pil_to_tensor(Image.open(io.BytesIO(_png())))
    q = make_question(prompt, image, "What shape is in the image?", None)
    assert q.instruction("llava") == "Q: What shape is in the image? A:"
    with torch.no_grad():
        want = adapter.score_choices(torch.stack([q.clean, q.prompted]), [q.instruction("llava")] * 2, CHOICES)
    for key, row in (("without_prompt", 0), ("with_prompt", 1)):
        got = answer[key]
        assert got["scores"] == pytest.approx(want[row].tolist(), abs=1e-3)
        assert got["answer"] == CHOICES[int(want[row].argmax())]
        assert sum(got["probabilities"]) == pytest.approx(1.0, abs=1e-3)
    assert answer["with_prompt"]["scores"] != answer["without_prompt"]["scores"]  # the prompt changes the input
    r = served.post(f"/prompts/{served.prompt_id}/ask", files={"image": ("a.png", _png())},
                    data={"question": "Colour?", "choices": ["red", "blue"]})
    assert r.status_code == 200 and r.json()["choices"] == ["red", "blue"]
    assert len(r.json()["answers"][0]["with_prompt"]["scores"]) == 2


@pytest.mark.parametrize("data, files, status, message", [
    ({"question": "Q?", "choices": ["only-one"]}, None, 422, "2-32"),
    ({"question": "Q?", "choices": ["a", "a"]}, None, 422, "once"),
    ({"question": ""}, None, 422, "question"),
    ({"question": "Q?"}, {"image": ("a.png", b"not an image")}, 400, "image"),
])
def test_ask_refuses_bad_input_in_one_line(served, data, files, status, message):
    r = served.post(f"/prompts/{served.prompt_id}/ask", files=files or {"image": ("a.png", _png())}, data=data)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert "tvp-image-" not in r.json()["detail"]  # never a server path
    assert served.post("/prompts/nope/ask", files={"image": ("a.png", _png())},
                       data={"question": "Q?"}).status_code == 404


def test_ask_is_rate_limited_and_off_without_models(tmp_path):
    app = create_app(Settings(store_dir=tmp_path / "store", ask_rate_per_minute=1, ask_burst=1))
    with TestClient(app) as client:
        assert client.get("/models").json() == []
        first = client.post("/prompts/abc/ask", files={"image": ("a.png", _png())}, data={"question": "Q?"})
        assert first.status_code == 404 and "hosts no models" in first.json()["detail"]
        second = client.post("/prompts/abc/ask", files={"image": ("a.png", _png())}, data={"question": "Q?"})
        assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1


class _Adapter:
    """Scores choice k of image i as i + k (so batching mistakes show), records its batch sizes."""

    family, model_id, name, device = "fake", "fake:m", "m", torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score_choices(self, pixels, prompts, choices):
        self.calls.append(len(pixels))
        return pixels.mean(dim=(1, 2, 3))[:, None] + torch.arange(len(choices))[None]


def _question(value: float, choices=("a", "b")):
    from tvprompt.serve.ask import Question

    img = torch.full((3, 8, 8), value)
    return Question("q", list(choices), {}, img, img / 2)


def test_the_worker_batches_waiting_asks_and_the_queue_is_bounded():
    adapter = _Adapter()
    host = ModelHost([adapter], queue_size=3, batch_size=8)
    futures = [host.submit(_question(v)) for v in (0.1, 0.2, 0.3)]  # queued before the worker starts
    with pytest.raises(QueueFull):
        host.submit(_question(0.4))
    host.start()
    try:
        results = [f.result(timeout=10) for f in futures]
    finally:
        host.stop()
    assert adapter.calls == [6] and host.batches == [3]  # 3 asks, clean + prompted each, in one call
    for v, [row] in zip((0.1, 0.2, 0.3), results, strict=True):
        assert row["without_prompt"]["scores"] == pytest.approx([v, v + 1], abs=1e-4)
        assert row["with_prompt"]["scores"] == pytest.approx([v / 2, v / 2 + 1], abs=1e-4)
        assert row["with_prompt"]["answer"] == "b"


def test_asks_with_different_choices_are_scored_apart():
    adapter = _Adapter()
    host = ModelHost([adapter], queue_size=4, batch_size=8)
    a, b = host.submit(_question(0.1, ("x", "y"))), host.submit(_question(0.2, ("x", "y", "z")))
    host.start()
    try:
        ra, rb = a.result(timeout=10), b.result(timeout=10)
    finally:
        host.stop()
    assert sorted(adapter.calls) == [2, 2]
    assert len(ra[0]["with_prompt"]["scores"]) == 2 and len(rb[0]["with_prompt"]["scores"]) == 3


def test_host_without_models_refuses_asks():
    with pytest.raises(UsageError, match="--model"):
        ModelHost([]).submit(_question(0.1))
    with pytest.raises(UsageError, match="twice"):
        ModelHost.load(["zoo:llava-p8", "zoo:llava-p8"])
