"""OmsClient's mapping of answers to results and typed errors, with aioresponses (no sockets)."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import aioresponses
import pytest

from worker.oms.client import OmsClient
from worker.oms.errors import (
    AuthFailed,
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
)
from worker.oms.retry import RetryPolicy

from .conftest import PID, Harness

BASE = "https://oms.cn-north-4.myhuaweicloud.com"
ANY_URL = re.compile(rf"^{re.escape(BASE)}/v2/.*$")
ONCE = RetryPolicy(max_attempts=1)


def _client(harness: Harness) -> OmsClient:
    return harness.client(BASE, retry=ONCE)


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_type", "code", "request_id"),
    [
        (
            400,
            {"error_code": "OMS.0063", "error_msg": "running"},
            {},
            TaskRunning,
            "OMS.0063",
            None,
        ),
        (400, {"error_code": "OMS.1009", "error_msg": "gone"}, {}, TaskNotFound, "OMS.1009", None),
        (400, {"error_code": "OMS.0064"}, {}, InvalidRequest, "OMS.0064", None),
        (400, {"error_code": "OMS.0066"}, {}, TaskNotMigrating, "OMS.0066", None),
        (400, {"error_code": "OMS.9999"}, {}, InvalidRequest, "OMS.9999", None),
        (403, {"error_code": "OMS.0206"}, {}, PermissionDenied, "OMS.0206", None),
        (401, {"error_code": "APIG.0301", "request_id": "b-1"}, {}, AuthFailed, "APIG.0301", "b-1"),
        (429, {"error_code": "APIG.0308"}, {"X-Request-Id": "h-1"}, Throttled, "APIG.0308", "h-1"),
        (500, {"error_code": "OMS.2004"}, {}, ServerError, "OMS.2004", None),
        (502, b"<html>bad gateway</html>", {}, ServerError, None, None),
        (503, b"", {"X-Request-Id": "h-2"}, ServerError, None, "h-2"),
        (404, b"<html>404</html>", {}, MalformedResponse, None, None),
        (302, b"", {"Location": "https://elsewhere.example/"}, MalformedResponse, None, None),
    ],
)
async def test_non_2xx_answers_map_to_typed_errors(
    mock_http: aioresponses.aioresponses,
    harness: Harness,
    status: int,
    body: dict[str, Any] | bytes,
    headers: dict[str, str],
    error_type: type[OmsError],
    code: str | None,
    request_id: str | None,
) -> None:
    """Status and body decide the error type; code, request id, method and path are kept."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    mock_http.delete(ANY_URL, status=status, body=raw, headers=headers)
    async with _client(harness) as client:
        with pytest.raises(OmsError) as caught:
            await client.delete_task(191297407830872)
    error = caught.value
    assert type(error) is error_type
    assert error.http_status == status
    assert error.error_code == code
    assert error.request_id == request_id
    assert error.info.method == "DELETE"
    assert error.info.path == f"/v2/{PID}/tasks/191297407830872"


HTML = b"<!DOCTYPE html><html><body>Please log in to the proxy</body></html>"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (HTML, "Invalid JSON"),
        (b"", "EOF"),
        (b'{"tasks": [], "count": 1', "EOF"),
        (b"[]", "body: Input should be an object"),
        (b'{"tasks": "none", "count": 0}', "tasks: Input should be a valid array"),
        (b'{"tasks": []}', "count: Field required"),
        (b'{"tasks": [], "count": "3"}', "count: Input should be a valid integer"),
        (b'{"tasks": [], "count": -1}', "count: Input should be greater than or equal to 0"),
    ],
)
async def test_list_answers_that_do_not_validate_are_malformed(
    mock_http: aioresponses.aioresponses, harness: Harness, body: bytes, problem: str
) -> None:
    """A 200 whose body is not a task page raises MalformedResponse saying what is wrong."""
    mock_http.get(ANY_URL, status=200, body=body, headers={"X-Request-Id": "r-9"})
    async with _client(harness) as client:
        with pytest.raises(MalformedResponse) as caught:
            await client.list_tasks()
    message = str(caught.value)
    assert problem in message
    assert caught.value.request_id == "r-9"
    assert caught.value.http_status == 200
    assert f"{len(body)} bytes" in message


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (b'{"id": "5", "status": 3}', "id"),
        (b'{"id": 5, "status": "3"}', "status"),
        (b'{"id": 5}', "status: Field required"),
        (b'{"id": 5, "status": 3, "start_time": "x"}', "start_time"),
        (b'{"id": 5, "status": 3, "name": null}', "name"),
    ],
)
async def test_one_odd_task_does_not_break_its_page(
    mock_http: aioresponses.aioresponses, harness: Harness, entry: bytes, problem: str
) -> None:
    """A task entry that does not validate is set aside; the page and its other tasks stand."""
    body = b'{"tasks": [{"id": 9, "status": 5}, ' + entry + b'], "count": 2}'
    mock_http.get(ANY_URL, status=200, body=body)
    async with _client(harness) as client:
        page = await client.list_tasks()
    assert [task.id for task in page.tasks] == [9]
    (malformed,) = page.malformed
    assert problem in malformed.problem


async def test_a_json_body_under_another_content_type_is_malformed(
    mock_http: aioresponses.aioresponses, harness: Harness
) -> None:
    """A 200 declared text/html is a proxy's page, even when its body parses as a task page."""
    mock_http.get(ANY_URL, status=200, body=b'{"tasks": [], "count": 0}', content_type="text/html")
    async with _client(harness) as client:
        with pytest.raises(MalformedResponse, match="not a JSON content type"):
            await client.list_tasks()


@pytest.mark.parametrize(
    "broken",
    [
        {"body": b'{"tasks": [{"id": 1, "status": 5}], "cou'},
        {"body": HTML, "content_type": "text/html"},
        {"body": b'{"tasks": [], "count": 0}', "content_type": "text/plain"},
    ],
    ids=["truncated", "html", "text-plain"],
)
async def test_a_broken_2xx_to_a_get_is_retried(
    mock_http: aioresponses.aioresponses, harness: Harness, broken: dict[str, Any]
) -> None:
    """Reading again is safe: a GET's broken 200 is retried like a 5xx, then read."""
    mock_http.get(ANY_URL, status=200, **broken)
    mock_http.get(ANY_URL, status=200, payload={"tasks": [{"id": 1, "status": 5}], "count": 1})
    async with harness.client(BASE, retry=RetryPolicy(max_attempts=2)) as client:
        page = await client.list_tasks()
        assert [task.id for task in page.tasks] == [1]
        assert client.stats.retries == 1
    assert len(harness.sleep.delays) == 1


async def test_a_get_broken_on_every_send_fails_after_the_budget(
    mock_http: aioresponses.aioresponses, harness: Harness
) -> None:
    """Bounded: a GET answered broken every time raises MalformedResponse after max_attempts."""
    for _ in range(3):
        mock_http.get(ANY_URL, status=200, body=HTML, content_type="text/html")
    async with harness.client(BASE, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(MalformedResponse):
            await client.show_task(3)
        assert client.stats.retries == 2
    assert len(harness.sleep.delays) == 2


@pytest.mark.parametrize("call", ["delete", "stop"])
async def test_a_broken_2xx_to_a_delete_or_stop_is_not_resent(
    mock_http: aioresponses.aioresponses, harness: Harness, call: str
) -> None:
    """A DELETE or POST may have taken effect: its broken 200 is raised, never re-sent blindly."""
    method = mock_http.delete if call == "delete" else mock_http.post
    method(ANY_URL, status=200, body=HTML, content_type="text/html")
    async with harness.client(BASE, retry=RetryPolicy(max_attempts=3)) as client:
        run = client.delete_task if call == "delete" else client.stop_task
        with pytest.raises(MalformedResponse):
            await run(5)
        assert client.stats.retries == 0
    assert harness.sleep.delays == []


async def test_malformed_message_quotes_only_a_short_snippet(
    mock_http: aioresponses.aioresponses, harness: Harness
) -> None:
    """A big HTML page is summarised, not echoed; response header values stay out."""
    page = b"<html>" + b"A" * 5000 + b"\x00\x1b[31m</html>"
    mock_http.get(ANY_URL, status=200, body=page, headers={"Set-Cookie": "session=COOKIE-VALUE"})
    async with _client(harness) as client:
        with pytest.raises(MalformedResponse) as caught:
            await client.show_task(3)
    message = str(caught.value)
    assert "A" * 61 not in message
    assert "<html>" in message
    assert "COOKIE-VALUE" not in message
    assert len(message) < 400


async def test_show_task_parses_one_unwrapped_task(
    mock_http: aioresponses.aioresponses, harness: Harness
) -> None:
    """show_task reads the bare task object, keeping what the model knows."""
    body = {"id": 42, "name": "n", "status": 4, "start_time": 1_700_000_000_000, "extra": [1]}
    mock_http.get(ANY_URL, status=200, payload=body)
    async with _client(harness) as client:
        task = await client.show_task(42)
    assert (task.id, task.name, task.status_code, task.start_time is not None) == (42, "n", 4, True)


async def test_show_task_rejects_a_wrapped_or_list_answer(
    mock_http: aioresponses.aioresponses, harness: Harness
) -> None:
    """A task page where a single task is expected is malformed, not a task."""
    mock_http.get(ANY_URL, status=200, payload={"tasks": [{"id": 1, "status": 3}], "count": 1})
    async with _client(harness) as client:
        with pytest.raises(MalformedResponse, match=r"id: Field required"):
            await client.show_task(1)


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        (b"", True),
        (b"  \n", True),
        (b"{}", True),
        (b'{"result": "ok"}', True),
        (HTML, False),
        (b"[]", False),
        (b"OK", False),
    ],
)
@pytest.mark.parametrize("call", ["delete", "stop"])
async def test_delete_and_stop_accept_only_empty_or_json_object_bodies(
    mock_http: aioresponses.aioresponses, harness: Harness, body: bytes, accepted: bool, call: str
) -> None:
    """A 200 with an HTML page is not taken as a successful delete or stop."""
    method = mock_http.delete if call == "delete" else mock_http.post
    method(ANY_URL, status=200, body=body)
    async with _client(harness) as client:
        run = client.delete_task if call == "delete" else client.stop_task
        if accepted:
            await run(5)
        else:
            with pytest.raises(MalformedResponse, match="expected an empty body"):
                await run(5)


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        TimeoutError(),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_exceptions_become_transport_error_with_cause(
    mock_http: aioresponses.aioresponses, harness: Harness, exception: Exception
) -> None:
    """aiohttp and timeout exceptions surface as TransportError chaining the original."""
    mock_http.get(ANY_URL, exception=exception)
    async with _client(harness) as client:
        with pytest.raises(TransportError) as caught:
            await client.show_task(1)
    assert caught.value.__cause__ is exception
    assert type(exception).__name__ in str(caught.value)
    assert caught.value.http_status is None
    assert caught.value.info.path == f"/v2/{PID}/tasks/1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
async def test_list_tasks_refuses_out_of_range_arguments(
    mock_http: aioresponses.aioresponses,
    harness: Harness,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    """Bad paging arguments are a ValueError before anything is sent."""
    async with _client(harness) as client:
        with pytest.raises(ValueError, match=message):
            await client.list_tasks(**kwargs)
    assert mock_http.requests == {}


@pytest.mark.parametrize("task_id", [0, -3, True, "12"])
async def test_task_ids_must_be_positive_integers(
    mock_http: aioresponses.aioresponses, harness: Harness, task_id: Any
) -> None:
    """A task id that is not a positive int never reaches the wire."""
    async with _client(harness) as client:
        with pytest.raises(ValueError, match="task id"):
            await client.delete_task(task_id)
    assert mock_http.requests == {}


async def test_calls_outside_the_context_manager_fail_clearly(harness: Harness) -> None:
    """Using a client that is not open is a programming error, not a transport error."""
    client = _client(harness)
    with pytest.raises(RuntimeError, match="not open"):
        await client.show_task(1)
