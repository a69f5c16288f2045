"""The official SDK (huaweicloudsdkoms 3.1.219) drives the simulator over real HTTP.

Its signatures must be accepted (permanent and temporary credentials), every error it can meet
must reach it with the fields it reads, and every body must have exactly the JSON types the
SDK's models declare. The SDK's own parsing is lenient (it drops unknown keys and reads "2" as
2), so bodies are checked separately against the models' `openapi_types`.

Type rule for numbers: an SDK `int` must be a JSON integer (not 2.0, not true, not "2"); an SDK
`float` accepts any JSON number, integers included, because JSON has a single number type and
the SDK reads floats with `float()` (a server writing progress 1.0 as `1` is well-typed).

The SDK is synchronous (requests): each call runs in a worker thread (asyncio.to_thread) while
the simulator serves on the test's event loop, so both sides use real sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import huaweicloudsdkoms.v2.model as sdk_models
import pytest
from conftest import FakeClock, SimulatorFactory
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import (
    ClientRequestException,
    ServerResponseException,
    ServiceResponseException,
)
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.http.http_handler import HttpHandler
from huaweicloudsdkoms.v2 import (
    DeleteTaskRequest,
    ListTasksRequest,
    OmsClient,
    ShowTaskRequest,
    StopTaskRequest,
)

from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimAccessKey,
    SimCredentials,
    TimingConfig,
)
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
TEMP_AK = "AKTEMPORARYAKTEMP002"
TEMP_SK = "SKtemporarySKtemporarySKtemporarySKtemp2"
TEMP_TOKEN = "SECURITYTOKEN-EXAMPLE-SDK-PEER"
FOREIGN_PROJECT = "f" * 32
UNKNOWN_TASK = 999_999_999_999_999
# Every documented status (and 0 and an unknown 9) is present, and many names are unicode.
POPULATION = PopulationConfig(
    status_weights=(
        (5, 0.35),
        (4, 0.15),
        (3, 0.1),
        (2, 0.12),
        (1, 0.1),
        (6, 0.06),
        (7, 0.06),
        (0, 0.03),
        (9, 0.03),
    ),
    unicode_name_share=0.3,
)
SIM_CREDENTIALS = SimCredentials(
    access_keys=(
        SimAccessKey(access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY),
        SimAccessKey(access_key=TEMP_AK, secret_key=TEMP_SK, security_token=TEMP_TOKEN),
    )
)
# Keys a task may lack: the population drops start_time on purpose for a few tasks.
MAY_BE_ABSENT = frozenset({"start_time"})
_INT64 = range(-(2**63), 2**63)


# --- the strict type check -------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(body: bytes) -> Any:
    """Parse a body as JSON proper: UTF-8, no NaN/Infinity."""
    return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)


def type_problems(value: Any, declared: str, where: str = "$") -> list[str]:
    """Where `value` differs from the SDK type `declared` ('int', 'list[TaskResp]', ...)."""
    if value is None:
        return [f"{where}: null where the SDK declares {declared}"]
    if declared.startswith("list["):
        if type(value) is not list:
            return [f"{where}: {type(value).__name__} where the SDK declares {declared}"]
        inner = declared[5:-1]
        return [
            p for i, item in enumerate(value) for p in type_problems(item, inner, f"{where}[{i}]")
        ]
    if declared.startswith("dict("):
        inner = declared.split(", ", 1)[1][:-1]
        if type(value) is not dict:
            return [f"{where}: {type(value).__name__} where the SDK declares {declared}"]
        return [p for k, v in value.items() for p in type_problems(v, inner, f"{where}.{k}")]
    checks: dict[str, Callable[[Any], bool]] = {
        "int": lambda v: type(v) is int and v in _INT64,
        "long": lambda v: type(v) is int and v in _INT64,
        "float": lambda v: type(v) in (int, float),
        "str": lambda v: type(v) is str,
        "bool": lambda v: type(v) is bool,
    }
    if declared in checks:
        if checks[declared](value):
            return []
        return [f"{where}: {type(value).__name__} {value!r} where the SDK declares {declared}"]
    model = getattr(sdk_models, declared, None)
    if model is None:
        return [f"{where}: the SDK type {declared} is not known to this check"]
    return _model_problems(value, model, where)


def _model_problems(value: Any, model: Any, where: str) -> list[str]:
    if type(value) is not dict:
        return [f"{where}: {type(value).__name__} where the SDK declares {model.__name__}"]
    by_json_key = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = [
        f"{where}.{key}: not a key of {model.__name__}" for key in value if key not in by_json_key
    ]
    for json_key, attr in by_json_key.items():
        if json_key not in value:
            if json_key not in MAY_BE_ABSENT:
                problems.append(f"{where}.{json_key}: missing from {model.__name__}")
            continue
        problems += type_problems(value[json_key], model.openapi_types[attr], f"{where}.{json_key}")
    return problems


def error_body_problems(body: bytes) -> list[str]:
    """An error body is {error_code, error_msg} (+ request_id), all strings, nothing else."""
    data = strict_json(body)
    if type(data) is not dict:
        return [f"$: {type(data).__name__} where an error object is expected"]
    problems = [
        f"$.{k}: unexpected key" for k in data if k not in ("error_code", "error_msg", "request_id")
    ]
    for key in ("error_code", "error_msg"):
        if type(data.get(key)) is not str or not data[key]:
            problems.append(f"$.{key}: missing or not a non-empty string")
    if "request_id" in data and type(data["request_id"]) is not str:
        problems.append("$.request_id: not a string")
    return problems


_TASK: dict[str, Any] = {
    "bandwidth_policy": [{"start": "00:00", "end": "06:00", "max_bandwidth": 1}],
    "complete_size": 1,
    "consistency_check": "crc64",
    "description": "",
    "dst_node": {"bucket": "b", "region": "r", "save_prefix": ""},
    "dst_storage_policy": "STANDARD",
    "enable_failed_object_recording": True,
    "enable_metadata_migration": False,
    "enable_requester_pays": False,
    "enable_restore": False,
    "error_reason": {"error_code": "", "error_msg": ""},
    "failed_num": 0,
    "failed_object_record": {"result": False, "list_file_key": "", "error_code": ""},
    "group_id": "",
    "group_type": "NORMAL_TASK",
    "id": 1,
    "is_query_over": True,
    "left_time": 0,
    "migrate_since": 0,
    "migrate_speed": 0,
    "name": "n",
    "object_overwrite_mode": "NO_OVERWRITE",
    "obs_system": "PFS",
    "progress": 0.5,
    "real_size": 1,
    "skip_record_error_reason": "",
    "skipped_num": 0,
    "smn_info": {"notify_result": False, "notify_error_message": "", "topic_name": ""},
    "source_cdn": {"domain": "", "protocol": "", "authentication_type": "NONE"},
    "src_node": {
        "app_id": "",
        "bucket": "s",
        "cloud_type": "AWS",
        "list_file": {"list_file_key": "", "obs_bucket": "", "list_file_num": ""},
        "object_key": ["a/"],
        "region": "r",
    },
    "start_time": 1,
    "status": 5,
    "success_record_error_reason": "",
    "successful_num": 1,
    "task_priority": "LOW",
    "task_type": "list",
    "total_num": 1,
    "total_size": 1,
    "total_time": 1,
}


def _task_with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    task = json.loads(json.dumps(_TASK))
    target: Any = task
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return {"tasks": [task], "count": 1}


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"tasks": [_TASK], "count": 1}, None),
        (_task_with(("progress",), 1), None),
        (_task_with(("start_time",), _DELETE), None),
        ({"tasks": [], "count": 0}, None),
        ({"tasks": [], "count": "0"}, "$.count: str"),
        ({"tasks": [], "count": 0.0}, "$.count: float"),
        ({"tasks": [], "count": True}, "$.count: bool"),
        ({"tasks": [], "count": 2**63}, "$.count: int"),
        ({"tasks": {}, "count": 0}, "$.tasks: dict"),
        ({"tasks": [], "count": 0, "more": 1}, "$.more: not a key"),
        ({"tasks": []}, "$.count: missing"),
        (_task_with(("id",), "1"), "$.tasks[0].id: str"),
        (_task_with(("status",), 5.0), "$.tasks[0].status: float"),
        (_task_with(("progress",), "0.5"), "$.tasks[0].progress: str"),
        (_task_with(("progress",), False), "$.tasks[0].progress: bool"),
        (_task_with(("is_query_over",), 1), "$.tasks[0].is_query_over: int"),
        (_task_with(("name",), 7), "$.tasks[0].name: int"),
        (_task_with(("description",), None), "$.tasks[0].description: null"),
        (_task_with(("group_id",), _DELETE), "$.tasks[0].group_id: missing"),
        (_task_with(("src_node", "object_key", 0), 3), "$.tasks[0].src_node.object_key[0]: int"),
        (_task_with(("src_node", "list_file", "list_file_num"), 8), "list_file_num: int"),
        (_task_with(("src_node", "cloud"), "AWS"), "$.tasks[0].src_node.cloud: not a key"),
        (_task_with(("bandwidth_policy", 0, "max_bandwidth"), "1"), "max_bandwidth: str"),
        (_task_with(("dst_node",), []), "$.tasks[0].dst_node: list"),
    ],
)
def test_the_strict_type_check_catches_what_the_sdk_would_let_through(
    body: dict[str, Any], problem: str | None
) -> None:
    """The checker accepts a well-typed page and names each kind of type slip it must catch."""
    problems = type_problems(body, "ListTasksResponse")
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]


# --- the SDK as a peer -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the SDK sent and the answer it received, as bytes on the wire."""

    method: str
    url: str
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes


# The SDK model each successful call's body must match; None for an empty body.
RESPONSE_MODELS: dict[str, str | None] = {
    "list_tasks": "ListTasksResponse",
    "show_task": "ShowTaskResponse",
    "delete_task": None,
    "stop_task": None,
}


@dataclass
class SdkPeer:
    """An official-SDK client pointed at a simulator that records what crossed the wire."""

    url: str
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = field(default=DEFAULT_SECRET_KEY, repr=False)
    project_id: str = DEFAULT_PROJECT_ID
    security_token: str | None = field(default=None, repr=False)
    exchanges: list[Exchange] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        credentials = BasicCredentials(self.access_key, self.secret_key, self.project_id)
        if self.security_token is not None:
            credentials = credentials.with_security_token(self.security_token)
        config = HttpConfig.get_default_config()
        config.timeout = (2, 10)
        self.client = (
            OmsClient.new_builder()
            .with_credentials(credentials)
            .with_endpoints([self.url])
            .with_http_config(config)
            .with_http_handler(HttpHandler().add_response_handler(self._record))
            .build()
        )

    def _record(self, **kwargs: Any) -> None:
        response = kwargs["response"]
        self.exchanges.append(
            Exchange(
                method=response.request.method,
                url=response.request.url,
                request_headers=dict(response.request.headers),
                status=response.status_code,
                headers=dict(response.headers),
                body=response.content,
            )
        )

    async def call(self, operation: str, request: Any) -> Any:
        """Run one SDK call in a thread; check the body it got before returning or raising."""
        sent = len(self.exchanges)
        try:
            return await asyncio.to_thread(getattr(self.client, operation), request)
        finally:
            # The SDK does not retry by default: exactly one exchange per call.
            assert len(self.exchanges) == sent + 1
            self._check(operation, self.exchanges[-1])

    @staticmethod
    def _check(operation: str, exchange: Exchange) -> None:
        assert REQUEST_ID.fullmatch(exchange.headers.get("X-Request-Id", ""))
        if exchange.status >= 400:
            assert exchange.headers["Content-Type"].startswith("application/json")
            assert error_body_problems(exchange.body) == []
            return
        model = RESPONSE_MODELS[operation]
        if model is None:
            assert exchange.body == b""
            return
        assert exchange.headers["Content-Type"].startswith("application/json")
        assert type_problems(strict_json(exchange.body), model) == []


@pytest.fixture(autouse=True)
def sdk_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK writes $HOME/.huaweicloud/application_id: a temporary HOME; no proxies."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def peer_simulator(make_simulator: SimulatorFactory) -> SimulatorHandle:
    """A simulator with every status present, unicode names and a temporary key."""
    return await make_simulator(population=POPULATION, credentials=SIM_CREDENTIALS)


def _tasks(handle: SimulatorHandle) -> list[dict[str, Any]]:
    return list(handle.state.projects[DEFAULT_PROJECT_ID].tasks.values())


def _a_task(handle: SimulatorHandle, status: int) -> dict[str, Any]:
    found = [task for task in _tasks(handle) if task["status"] == status]
    assert found, f"the population has no task with status {status}"
    return found[0]


def _matches(task: dict[str, Any], query: dict[str, Any]) -> bool:
    name = query.get("task_name")
    return (
        ("status" not in query or task["status"] == query["status"])
        and ("group_id" not in query or task["group_id"] == query["group_id"])
        and (not name or name.casefold() in task["name"].casefold())
    )


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"limit": 7, "offset": 0},
        {"limit": 100, "offset": 150},
        {"limit": 100, "offset": 5000},
        {"limit": 10, "offset": 3, "status": 4},
        {"limit": 100, "status": 2},
        {"limit": 50, "task_name": "NIGHTLY COPY/É"},
        {"limit": 50, "task_name": "迁移"},
        {"limit": 5, "offset": 2, "task_name": "copy"},
        {"limit": 100, "group_id": "first group"},
    ],
    ids=lambda q: ",".join(f"{k}={v}" for k, v in q.items()) or "defaults",
)
async def test_sdk_lists_with_each_filter(
    peer_simulator: SimulatorHandle, query: dict[str, Any]
) -> None:
    """The SDK's list with limit/offset/status/task_name/group_id gets the matching page."""
    handle = peer_simulator
    if query.get("group_id") == "first group":
        query = {**query, "group_id": next(t["group_id"] for t in _tasks(handle) if t["group_id"])}
    truth = [task for task in _tasks(handle) if _matches(task, query)]
    assert truth or "offset" in query, "the filter should match something"
    peer = SdkPeer(handle.url)
    listed = await peer.call("list_tasks", ListTasksRequest(**query))
    limit, offset = query.get("limit", 10), query.get("offset", 0)
    assert listed.count == len(truth)
    assert len(listed.tasks) == max(0, min(limit, len(truth) - offset))
    by_id = {task["id"]: task for task in truth}
    for task in listed.tasks:
        assert task.id in by_id
        assert (task.name, task.status) == (by_id[task.id]["name"], by_id[task.id]["status"])
    assert len({task.id for task in listed.tasks}) == len(listed.tasks)
    assert handle.state.requests["list"] == 1


async def test_sdk_pages_through_a_filter_and_sees_each_task_once(
    peer_simulator: SimulatorHandle,
) -> None:
    """Paging the failed tasks seven at a time yields exactly the simulator's failed tasks."""
    handle = peer_simulator
    peer = SdkPeer(handle.url)
    seen: list[int] = []
    while True:
        page = await peer.call("list_tasks", ListTasksRequest(limit=7, offset=len(seen), status=4))
        seen += [task.id for task in page.tasks]
        if len(page.tasks) < 7:
            break
    assert sorted(seen) == sorted(t["id"] for t in _tasks(handle) if t["status"] == 4)


async def test_sdk_show_returns_the_task_the_simulator_holds(
    peer_simulator: SimulatorHandle,
) -> None:
    """show_task returns one unwrapped task whose fields are the simulator's."""
    handle = peer_simulator
    task = _a_task(handle, 4)
    shown = await SdkPeer(handle.url).call("show_task", ShowTaskRequest(task_id=task["id"]))
    assert (shown.id, shown.name, shown.status) == (task["id"], task["name"], 4)
    assert shown.error_reason.error_code == task["error_reason"]["error_code"]
    assert shown.src_node.bucket == task["src_node"]["bucket"]


async def test_sdk_stop_then_delete_once_paused(make_simulator: SimulatorFactory) -> None:
    """stop pauses a migrating task; once paused the SDK's delete removes it."""
    # The SDK signs with the real clock: the simulator's fake clock starts at real time.
    clock = FakeClock(datetime.now(UTC))
    handle = await make_simulator(
        now=clock.now,
        population=POPULATION,
        timing=TimingConfig(sticky_pause_share=0.0, finish_after=(timedelta(days=1),) * 2),
    )
    task_id = _a_task(handle, 2)["id"]
    peer = SdkPeer(handle.url)
    await peer.call("stop_task", StopTaskRequest(task_id=task_id))
    assert handle.state.show_task(DEFAULT_PROJECT_ID, task_id)["status"] == 7
    clock.advance(handle.config.timing.pausing_delay)
    assert handle.state.show_task(DEFAULT_PROJECT_ID, task_id)["status"] == 3
    await peer.call("delete_task", DeleteTaskRequest(task_id=task_id))
    assert [(s.task_id, s.by) for s in handle.state.stops] == [(task_id, DEFAULT_ACCESS_KEY)]
    assert [(d.task_id, d.by) for d in handle.state.deletions] == [(task_id, DEFAULT_ACCESS_KEY)]
    assert [e.method for e in peer.exchanges] == ["POST", "DELETE"]


async def test_sdk_temporary_credentials_are_accepted(peer_simulator: SimulatorHandle) -> None:
    """With a security token the SDK signs X-Security-Token too, and each call is accepted."""
    handle = peer_simulator
    peer = SdkPeer(handle.url, access_key=TEMP_AK, secret_key=TEMP_SK, security_token=TEMP_TOKEN)
    listed = await peer.call("list_tasks", ListTasksRequest(limit=3, status=5))
    task_id = listed.tasks[0].id
    await peer.call("show_task", ShowTaskRequest(task_id=task_id))
    await peer.call("delete_task", DeleteTaskRequest(task_id=task_id))
    running = _a_task(handle, 2)["id"]
    await peer.call("stop_task", StopTaskRequest(task_id=running))
    assert [(d.task_id, d.by) for d in handle.state.deletions] == [(task_id, TEMP_AK)]
    assert [(s.task_id, s.by) for s in handle.state.stops] == [(running, TEMP_AK)]
    for exchange in peer.exchanges:
        assert exchange.request_headers["X-Security-Token"] == TEMP_TOKEN
        assert "x-security-token" in exchange.request_headers["Authorization"]
    assert handle.state.rejected["auth"] == 0


# --- errors as the SDK meets them ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """One error the SDK can meet: how to provoke it and what the SDK must report."""

    call: Callable[[SimulatorHandle], tuple[str, Any]]
    statuses: frozenset[int]
    codes: frozenset[str]
    peer: dict[str, Any] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)


def _list(**params: Any) -> Callable[[SimulatorHandle], tuple[str, Any]]:
    return lambda handle: ("list_tasks", ListTasksRequest(**params))


def _on_task(operation: str, status: int | None) -> Callable[[SimulatorHandle], tuple[str, Any]]:
    requests = {"show_task": ShowTaskRequest, "delete_task": DeleteTaskRequest}
    requests["stop_task"] = StopTaskRequest

    def build(handle: SimulatorHandle) -> tuple[str, Any]:
        task_id = UNKNOWN_TASK if status is None else _a_task(handle, status)["id"]
        return operation, requests[operation](task_id=task_id)

    return build


def _frozen_monotonic() -> float:
    # The rate window never slides: after the first request every one is throttled.
    return 0.0


ERROR_CASES: dict[str, ErrorCase] = {
    "delete-waiting": ErrorCase(
        _on_task("delete_task", 1), frozenset({400}), frozenset({"OMS.0063"})
    ),
    "delete-not-started": ErrorCase(
        _on_task("delete_task", 0), frozenset({400}), frozenset({"OMS.0063"})
    ),
    "delete-migrating": ErrorCase(
        _on_task("delete_task", 2), frozenset({400}), frozenset({"OMS.0063"})
    ),
    "delete-unknown-status": ErrorCase(
        _on_task("delete_task", 9), frozenset({400}), frozenset({"OMS.0063"})
    ),
    "delete-missing": ErrorCase(
        _on_task("delete_task", None), frozenset({400}), frozenset({"OMS.1009"})
    ),
    "show-missing": ErrorCase(
        _on_task("show_task", None), frozenset({400}), frozenset({"OMS.1009"})
    ),
    "stop-missing": ErrorCase(
        _on_task("stop_task", None), frozenset({400}), frozenset({"OMS.1009"})
    ),
    "limit-0": ErrorCase(_list(limit=0), frozenset({400}), frozenset({"OMS.0064"})),
    "limit-101": ErrorCase(_list(limit=101), frozenset({400}), frozenset({"OMS.0064"})),
    "offset-negative": ErrorCase(_list(offset=-1), frozenset({400}), frozenset({"OMS.0064"})),
    "status-8": ErrorCase(_list(status=8), frozenset({400}), frozenset({"OMS.0064"})),
    "stop-finished": ErrorCase(_on_task("stop_task", 5), frozenset({400}), frozenset({"OMS.0066"})),
    "stop-paused": ErrorCase(_on_task("stop_task", 3), frozenset({400}), frozenset({"OMS.0066"})),
    "wrong-sk": ErrorCase(
        _list(), frozenset({401}), frozenset({"APIG.0301"}), peer={"secret_key": "wrong" * 8}
    ),
    "unknown-ak": ErrorCase(
        _list(),
        frozenset({401}),
        frozenset({"APIG.0301"}),
        peer={"access_key": "AKUNKNOWN0000000001"},
    ),
    "temporary-ak-without-token": ErrorCase(
        _list(),
        frozenset({401}),
        frozenset({"APIG.0301"}),
        peer={"access_key": TEMP_AK, "secret_key": TEMP_SK},
    ),
    "temporary-ak-wrong-token": ErrorCase(
        _on_task("delete_task", 5),
        frozenset({401}),
        frozenset({"APIG.0301"}),
        peer={
            "access_key": TEMP_AK,
            "secret_key": TEMP_SK,
            "security_token": "SECURITYTOKEN-OTHER",
        },
    ),
    "foreign-project": ErrorCase(
        _list(), frozenset({403}), frozenset({"OMS.0206"}), peer={"project_id": FOREIGN_PROJECT}
    ),
    "server-error": ErrorCase(
        _on_task("delete_task", 5),
        frozenset({500, 502, 503}),
        frozenset({"OMS.2004", "APIG.0202"}),
        simulator={"faults": FaultConfig(error_rate=1.0)},
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
async def test_sdk_meets_each_error_with_its_code_and_request_id(
    make_simulator: SimulatorFactory, case: str
) -> None:
    """Each error reaches the SDK as its exception with status, code and the X-Request-Id."""
    spec = ERROR_CASES[case]
    handle = await make_simulator(
        population=POPULATION, credentials=SIM_CREDENTIALS, **spec.simulator
    )
    peer = SdkPeer(handle.url, **spec.peer)
    operation, request = spec.call(handle)
    before = handle.state.snapshot()
    with pytest.raises(ServiceResponseException) as caught:
        await peer.call(operation, request)
    error = caught.value
    expected_class = ServerResponseException if error.status_code >= 500 else ClientRequestException
    assert type(error) is expected_class
    assert error.status_code in spec.statuses
    assert error.error_code in spec.codes
    assert error.error_msg
    exchange = peer.exchanges[-1]
    assert error.status_code == exchange.status
    assert error.request_id == exchange.headers["X-Request-Id"]
    body = strict_json(exchange.body)
    assert body["error_code"] == error.error_code
    if error.error_code.startswith("APIG."):
        assert body["request_id"] == error.request_id
    # A refused call changes nothing.
    after = handle.state.snapshot()
    assert (after["deletions"], after["stops"]) == (before["deletions"], before["stops"])
    assert after["remaining"] == before["remaining"]
    for secret in (DEFAULT_SECRET_KEY, TEMP_SK, TEMP_TOKEN, "SECURITYTOKEN-OTHER"):
        assert secret not in exchange.body.decode()


async def test_sdk_meets_throttling_as_a_bare_429(make_simulator: SimulatorFactory) -> None:
    """Under the simulator's rate limit the SDK raises 429, without APIG.0308 or a request id.

    With its default `retry_times=0` the SDK lets urllib3 treat 429 as retryable, so urllib3
    raises "too many 429 error responses" before the SDK reads the answer: the SDK reports
    status 429, error code "429" and an empty request id. That is the SDK's limit, not the
    simulator's (whose 429 body and Retry-After are checked in test_faults.py).
    """
    handle = await make_simulator(
        population=POPULATION, faults=FaultConfig(rate_limit=1), monotonic=_frozen_monotonic
    )
    peer = SdkPeer(handle.url)
    await peer.call("list_tasks", ListTasksRequest(limit=1))
    with pytest.raises(ClientRequestException) as caught:
        await asyncio.to_thread(peer.client.list_tasks, ListTasksRequest(limit=1))
    error = caught.value
    assert (error.status_code, error.error_code, error.request_id) == (429, "429", "")
    assert "429" in error.error_msg
    assert handle.state.rejected["throttled"] == 1
    assert handle.state.requests["list"] == 1
    assert len(peer.exchanges) == 1  # the 429 never reached the SDK's response handlers
