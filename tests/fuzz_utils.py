"""Schemathesis over every operation of an ASGI app (shared by the SQLite and PostgreSQL tests)."""

from __future__ import annotations

from typing import Any


def fuzz_app(app: Any, token: str, mode: str, examples: int) -> int:
    """Send schema-generated requests (``mode``: positive or negative), each anonymous and with ``token``.

    Raises AssertionError naming the operation on a 5xx or a response the OpenAPI schema does not
    declare (status code, content type, body). Returns the number of operations tested.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=checks)
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=checks)

        try:
            check()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. GET /health)
            assert mode == "negative", operation.label
        except Exception as e:
            raise AssertionError(f"{operation.label} ({mode}): {e}") from e
    return len(operations)
