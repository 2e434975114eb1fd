"""Property-based API testing with schemathesis: every operation of the live ASGI app, with and without a token.

Each generated request is sent twice (anonymous, then with a valid token) and must get no 5xx
and a status code, content type and body that the OpenAPI schema declares. Examples are
derandomized and few, so the run is bounded and repeatable; raise ``TVP_SCHEMATHESIS_EXAMPLES``
to dig deeper. The same run on PostgreSQL is in ``test_serve_postgres.py``.
"""

from __future__ import annotations

import os

import pytest

from tvprompt.serve.archive import pack_dir

from .service_utils import make_prompt

pytest.importorskip("schemathesis")
EXAMPLES = int(os.environ.get("TVP_SCHEMATHESIS_EXAMPLES", "15"))


def fuzz_target(root, db_url: str | None = None):
    """An app with one registered prompt, a data root and a trainer that always fails; returns (app, token)."""
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app
    from tvprompt.serve.auth import create_token

    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"image": "a.png", "answer": "red"}\n')
    app = create_app(Settings(store_dir=root / "store", db_url=db_url, data_root=root / "data", train_command=["false"],
                              apply_rate_per_minute=1e6, apply_burst=10**6, max_image_pixels=1_000_000))
    with TestClient(app) as client:  # one real prompt, so ids and listings are not all empty
        token = create_token(app.state.ctx.sessions, "fuzzer")[1]
        r = client.post("/prompts", files={"file": ("p.zip", pack_dir(make_prompt(root / "p", task="fuzz")))},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
    return app, token


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return fuzz_target(tmp_path_factory.mktemp("schemathesis"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_has_no_server_errors_and_matches_its_schema(target, mode):
    """Valid requests (positive) and requests that break the schema (negative), for every operation."""
    from .fuzz_utils import fuzz_app

    app, token = target
    assert fuzz_app(app, token, mode, EXAMPLES) >= 15  # every operation of the API was tested (datasets too)
