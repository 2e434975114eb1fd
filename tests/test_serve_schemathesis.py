"""Property-based API testing with schemathesis: every operation of the live ASGI app, with and without a token.

Each generated request is sent twice (anonymous, then with a valid token) and must get no 5xx,
a status code, content type and body that the OpenAPI schema declares. Examples are derandomized
and few, so the run is bounded and repeatable; raise ``TVP_SCHEMATHESIS_EXAMPLES`` to dig deeper.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tvprompt.serve.archive import pack_dir  # noqa: E402

from .service_utils import make_prompt  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("TVP_SCHEMATHESIS_EXAMPLES", "15"))
HEADERS: dict[str, str] = {}


@pytest.fixture(scope="session")
def api_schema(tmp_path_factory):
    from fastapi.testclient import TestClient

    from tvprompt.serve import Settings, create_app
    from tvprompt.serve.auth import create_token

    root = tmp_path_factory.mktemp("schemathesis")
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"image": "a.png", "answer": "red"}\n')
    settings_ = Settings(store_dir=root / "store", data_root=root / "data", train_command=["false"],
                         apply_rate_per_minute=1e6, apply_burst=10**6, max_image_pixels=1_000_000)
    app = create_app(settings_)
    with TestClient(app) as client:  # one real prompt, so ids and listings are not all empty
        token = create_token(app.state.ctx.sessions, "fuzzer")[1]
        r = client.post("/prompts", files={"file": ("p.zip", pack_dir(make_prompt(root / "p", task="fuzz")))},
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
    HEADERS["Authorization"] = f"Bearer {token}"
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_has_no_server_errors_and_matches_its_schema(api_schema, mode):
    """Valid requests (positive) and requests that break the schema (negative), for every operation."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9  # the API's operations were all found
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=CHECKS)
            case.call_and_validate(headers=dict(HEADERS), checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. GET /health)
            assert mode == "negative", operation.label
        except Exception as e:
            raise AssertionError(f"{operation.label} ({mode}): {e}") from e
