"""classify() and its helpers: every status and code in the reference, by table."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from worker.oms.errors import (
    MAX_RETRY_AFTER,
    AuthFailed,
    ErrorInfo,
    InvalidRequest,
    MalformedResponse,
    OmsError,
    PermissionDenied,
    ServerError,
    TaskNotFound,
    TaskNotMigrating,
    TaskRunning,
    Throttled,
    TransportError,
    classify,
    parse_error_body,
    parse_limit,
    parse_retry_after,
)


def _body(code: str | None, msg: str | None = None, request_id: str | None = None) -> bytes:
    data = {"error_code": code, "error_msg": msg, "request_id": request_id}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable"),
    [
        (400, _body("OMS.0063"), TaskRunning, False),
        (400, _body("OMS.1009"), TaskNotFound, False),
        (400, _body("OMS.0064"), InvalidRequest, False),
        (400, _body("OMS.0066"), TaskNotMigrating, False),
        (400, _body("OMS.0001"), InvalidRequest, False),
        (404, _body("OMS.1009"), TaskNotFound, False),
        (403, _body("OMS.0206"), PermissionDenied, False),
        (403, b"", PermissionDenied, False),
        (400, _body("OMS.0206"), PermissionDenied, False),
        (401, _body("APIG.0301"), AuthFailed, False),
        (401, b"<html>", AuthFailed, False),
        (400, _body("APIG.0301"), AuthFailed, False),
        (429, _body("APIG.0308", "limit:60,time:1 minute"), Throttled, True),
        (429, b"", Throttled, True),
        (400, _body("APIG.0308"), Throttled, True),
        (500, _body("OMS.2004"), ServerError, True),
        (502, b"<html>Bad Gateway</html>", ServerError, True),
        (503, b"", ServerError, True),
        (504, _body("APIG.0203"), ServerError, True),
        (400, b"", MalformedResponse, False),
        (404, b"<html>Not Found</html>", MalformedResponse, False),
        (400, b'["OMS.0063"]', MalformedResponse, False),
        (302, _body("OMS.1009"), MalformedResponse, False),
        (304, b"", MalformedResponse, False),
    ],
)
def test_classify(status: int, body: bytes, expected: type[OmsError], retryable: bool) -> None:
    """Status and error code decide the type and whether it is retried."""
    error = classify(method="DELETE", path="/v2/p/tasks/1", status=status, headers={}, body=body)
    assert type(error) is expected
    assert error.retryable is retryable
    assert error.http_status == status
    assert error.info.method == "DELETE"
    assert error.info.path == "/v2/p/tasks/1"


@pytest.mark.parametrize(
    ("headers", "body", "request_id"),
    [
        ({"X-Request-Id": "hdr"}, _body("OMS.0063", request_id="body"), "hdr"),
        ({"x-request-id": "lower"}, _body("OMS.0063"), "lower"),
        (CIMultiDict({"X-REQUEST-ID": "multi"}), _body("OMS.0063"), "multi"),
        ({}, _body("OMS.0063", request_id="body"), "body"),
        ({}, _body("OMS.0063"), None),
        ({"X-Request-Id": ""}, _body("OMS.0063", request_id="body"), "body"),
    ],
)
def test_request_id_prefers_the_header(
    headers: dict[str, str], body: bytes, request_id: str | None
) -> None:
    """X-Request-Id (any case) wins over the body's request_id; either is kept."""
    error = classify(method="GET", path="/p", status=400, headers=headers, body=body)
    assert error.request_id == request_id


def test_error_code_and_message_are_kept() -> None:
    """The OMS code and message reach the error and its report shape."""
    error = classify(
        method="DELETE",
        path="/v2/p/tasks/9",
        status=400,
        headers={"X-Request-Id": "r-1"},
        body=_body("OMS.0063", "task is running"),
    )
    assert error.error_code == "OMS.0063"
    assert error.info.as_report() == {
        "http_status": 400,
        "error_code": "OMS.0063",
        "error_msg": "task is running",
        "request_id": "r-1",
    }
    assert str(error) == (
        "TaskRunning: DELETE /v2/p/tasks/9, HTTP 400, OMS.0063, task is running, request_id=r-1"
    )


@pytest.mark.parametrize(
    ("headers", "body", "retry_after", "limit"),
    [
        ({"Retry-After": "7"}, _body("APIG.0308", "limit:60,time:1 minute"), 7.0, 1.0),
        ({"retry-after": "0.5"}, _body("APIG.0308", "limit:20,time:1 second"), 0.5, 20.0),
        ({}, _body("APIG.0308", "The API limit:3600,time:1 hour reached"), None, 1.0),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, b"", None, None),
        ({"Retry-After": "-3"}, _body("APIG.0308", "throttled"), None, None),
    ],
)
def test_throttled_carries_retry_after_and_limit(
    headers: dict[str, str], body: bytes, retry_after: float | None, limit: float | None
) -> None:
    """A 429 keeps Retry-After (seconds form) and the limit the gateway states, per second."""
    error = classify(method="GET", path="/p", status=429, headers=headers, body=body)
    assert isinstance(error, Throttled)
    assert error.retry_after == retry_after
    assert error.limit_per_second == limit


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-1", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        # Capped where it enters: no consumer is handed a longer wait.
        ("100000", MAX_RETRY_AFTER),
        (str(MAX_RETRY_AFTER + 1), MAX_RETRY_AFTER),
        (str(MAX_RETRY_AFTER), MAX_RETRY_AFTER),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Only finite, non-negative delta-seconds are honoured, and never above the cap."""
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("limit:60,time:1 minute", 1.0),
        ("limit: 10 , time: 1 second", 10.0),
        ("LIMIT:7200,TIME:2 HOUR", 1.0),
        ("limit:30,time:10 second", 3.0),
        ("limit:5,time:0 second", None),
        ("requests throttled", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_limit(message: str | None, expected: float | None) -> None:
    """The throttling message's limit becomes requests per second."""
    assert parse_limit(message) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body("OMS.0063", "m", "r"), ("OMS.0063", "m", "r")),
        (b'{"error_code": 63, "error_msg": ""}', (None, None, None)),
        (b"[1, 2]", (None, None, None)),
        (b"\xff\xfe", (None, None, None)),
        (b"", (None, None, None)),
    ],
)
def test_parse_error_body(body: bytes, expected: tuple[str | None, str | None, str | None]) -> None:
    """Only non-empty string fields of a JSON object are taken."""
    assert parse_error_body(body) == expected


def test_transport_error_is_retryable_and_has_no_status() -> None:
    """A transport error describes the call without an HTTP status."""
    error = TransportError(ErrorInfo(method="GET", path="/p", error_msg="refused"))
    assert error.retryable
    assert error.http_status is None
    assert str(error) == "TransportError: GET /p, refused"
