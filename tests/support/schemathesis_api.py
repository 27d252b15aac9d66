"""Schemathesis against a FastAPI app's own OpenAPI schema, in process:
`from tests.support.schemathesis_api import fuzz_operations, load_operations`.

Every generated case is called with the given headers and must answer below 500, any 4xx in the
platform's one error shape (`{"error": {"code", "message", "parameter"}}`), and pass CHECKS.
What a test asserts beyond that (the operations it expects, which statuses it must have seen,
what an accepted request left behind) stays in the test.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Not positive_data_acceptance: no API's schema can say everything its validation does (a range's
# order and span, a timestamp's window, which report ids exist), so a schema-valid request may
# rightly get 404 or 422.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def bearer(token: str) -> dict[str, str]:
    """The Authorization header the APIs take."""
    return {"Authorization": f"Bearer {token}"}


def load_operations(app: Any) -> list[Any]:
    """Every operation of the app's /openapi.json (an error there fails the test)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def check_error_shape(response: Any) -> None:
    """A 4xx or 5xx body is `{"error": {...}}` with a non-empty code and message, a parameter or None."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"].get("parameter") is None or isinstance(body["error"]["parameter"], str)


def fuzz_operations(
    operations: list[Any],
    *,
    mode: GenerationMode,
    headers: dict[str, str],
    max_examples: int,
    skip_negative: Collection[str] = ("/health",),
    on_response: Callable[[Any, Any], None] | None = None,
) -> dict[int, int]:
    """Up to `max_examples` cases of `mode` per operation (explicit examples first), each checked as
    the module says, then `on_response(case, response)`. Operations whose path is in `skip_negative`
    (those without parameters: nothing to get wrong) are left out of the negative mode. The count of
    each status seen; a 5xx anywhere fails."""
    statuses: dict[int, int] = {}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.path in skip_negative:
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=max_examples,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call(headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                case.method,
                case.path,
                case.path_parameters,
                case.query,
                case.body,
                response.text,
            )
            check_error_shape(response)
            case.validate_response(response, checks=CHECKS)
            if on_response is not None:
                on_response(case, response)

        run()
    print(mode, sorted(statuses.items()))
    assert not any(code >= 500 for code in statuses), statuses
    return statuses
