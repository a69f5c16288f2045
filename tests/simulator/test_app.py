"""The simulator's HTTP API over a real socket: validation, bodies, auth, paging, admin view."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, SimulatorFactory
from pydantic import SecretStr
from sim_client import DEFAULT_AKSK, DEFAULT_TOKEN, SimClient, sim_client

from worker.oms.auth import AkSk, IamToken
from worker.simulator.app import STATE_KEY
from worker.simulator.config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_IAM_TOKEN,
    DEFAULT_PROJECT_ID,
    DEFAULT_SECRET_KEY,
    SimAccessKey,
    SimCredentials,
)
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle

REQUEST_ID = re.compile(r"[0-9a-f]{32}")
FINISHED_ONLY = PopulationConfig(status_weights=((5, 1.0),))
TEMP_AK = "AKTEMPORARYAKTEMP001"
TEMP_SK = "SKtemporarySKtemporarySKtemporarySKtemp1"
TEMP_TOKEN = "SECURITYTOKEN-EXAMPLE"


async def _first_id(client: SimClient) -> int:
    answer = await client.list(limit=1)
    task_id: int = answer.json()["tasks"][0]["id"]
    return task_id


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "ten"},
        {"limit": ""},
        {"limit": "1.5"},
        {"offset": -1},
        {"offset": "x"},
        {"offset": 2_147_483_648},
        {"status": 0},
        {"status": 8},
        {"status": "running"},
    ],
)
async def test_invalid_list_parameters_answer_oms_0064(
    simulator: SimulatorHandle, params: dict[str, Any]
) -> None:
    """Out-of-range or non-integer limit, offset and status are 400 OMS.0064."""
    async with sim_client(simulator) as client:
        answer = await client.list(**params)
    assert answer.status == 400
    assert answer.error_code == "OMS.0064"


@pytest.mark.parametrize(
    ("params", "expected_len"),
    [({}, 10), ({"limit": 1}, 1), ({"limit": 100}, 100), ({"offset": 195}, 5)],
)
async def test_list_defaults_and_bounds(
    simulator: SimulatorHandle, params: dict[str, Any], expected_len: int
) -> None:
    """limit defaults to 10 and accepts 1-100; count is the total, not the page size."""
    async with sim_client(simulator) as client:
        answer = await client.list(**params)
    assert answer.status == 200
    body = answer.json()
    assert len(body["tasks"]) == expected_len
    assert body["count"] == 200


@pytest.mark.parametrize("method", ["show", "delete", "stop"])
@pytest.mark.parametrize(
    ("task_id", "code"),
    [("abc", "OMS.0064"), ("12ab", "OMS.0064"), ("123456789012345", "OMS.1009")],
)
async def test_task_calls_validate_the_id(
    simulator: SimulatorHandle, method: str, task_id: str, code: str
) -> None:
    """A non-numeric id is OMS.0064; an unknown numeric id is OMS.1009."""
    async with sim_client(simulator) as client:
        answer = await getattr(client, method)(task_id)
    assert (answer.status, answer.error_code) == (400, code)


async def test_show_returns_the_unwrapped_task(simulator: SimulatorHandle) -> None:
    """show answers the same object the list holds, not wrapped."""
    async with sim_client(simulator) as client:
        listed = (await client.list(limit=1)).json()["tasks"][0]
        answer = await client.show(listed["id"])
    assert answer.status == 200
    assert answer.json() == listed


async def test_delete_and_stop_answer_200_with_an_empty_body(
    make_simulator: SimulatorFactory,
) -> None:
    """A successful delete or stop is 200 with no body; the delete takes effect."""
    handle = await make_simulator(population=PopulationConfig(status_weights=((2, 1.0), (5, 1.0))))
    async with sim_client(handle) as client:
        tasks = (await client.list(limit=100)).json()["tasks"]
        running = next(t["id"] for t in tasks if t["status"] == 2)
        done = next(t["id"] for t in tasks if t["status"] == 5)
        stopped = await client.stop(running)
        deleted = await client.delete(done)
        gone = await client.show(done)
    assert (stopped.status, stopped.body) == (200, b"")
    assert (deleted.status, deleted.body) == (200, b"")
    assert gone.error_code == "OMS.1009"


async def test_task_name_filter_is_a_case_insensitive_substring(
    make_simulator: SimulatorFactory,
) -> None:
    """task_name with spaces, `/` and unicode travels signed and matches fuzzily."""
    handle = await make_simulator(
        tasks_per_project=100, population=PopulationConfig(unicode_name_share=0.5)
    )
    everything = list(handle.state.projects[DEFAULT_PROJECT_ID].tasks.values())
    async with sim_client(handle) as client:
        answer = await client.list(limit=100, task_name="NIGHTLY COPY/É")
    assert answer.status == 200
    expected = {t["id"] for t in everything if "nightly copy/é" in t["name"].casefold()}
    assert expected
    assert {t["id"] for t in answer.json()["tasks"]} == expected
    assert answer.json()["count"] == len(expected)


async def test_paging_by_offset_shifts_when_deleting_between_pages(
    make_simulator: SimulatorFactory,
) -> None:
    """Terraform-style paging skips tasks if pages are deleted as they are read."""
    handle = await make_simulator(tasks_per_project=50, population=FINISHED_ONLY)
    async with sim_client(handle) as client:
        offset, seen = 0, []
        while True:
            page = (await client.list(limit=10, offset=offset)).json()["tasks"]
            seen += [t["id"] for t in page]
            for task in page:
                assert (await client.delete(task["id"])).status == 200
            offset += len(page)
            if len(page) < 10:
                break
        remaining = (await client.list(limit=100)).json()
    assert len(seen) == 30
    assert remaining["count"] == 20
    assert {t["id"] for t in remaining["tasks"]}.isdisjoint(seen)


async def test_every_response_carries_a_request_id(make_simulator: SimulatorFactory) -> None:
    """Successes, OMS errors, auth errors, unknown paths and the admin view all get X-Request-Id."""
    handle = await make_simulator()
    async with sim_client(handle) as client:
        answers = [
            await client.list(),
            await client.list(limit=0),
            await client.show("123"),
            await client.request("GET", "/v2/nope"),
            await client.request("GET", client.tasks_path(), credentials=IamToken(SecretStr("x"))),
            await client.request("PUT", client.tasks_path("1")),
        ]
        async with client.session.get(f"{handle.url}/_sim/state") as admin:
            answers_ids = [a.headers.get("X-Request-Id", "") for a in answers]
            answers_ids.append(admin.headers.get("X-Request-Id", ""))
    assert all(REQUEST_ID.fullmatch(rid) for rid in answers_ids), answers_ids
    assert len(set(answers_ids)) == len(answers_ids)
    assert answers[3].status == 404
    assert answers[3].json()["request_id"] == answers_ids[3]
    assert answers[4].json()["request_id"] == answers_ids[4]


async def test_unhosted_project_is_forbidden(simulator: SimulatorHandle) -> None:
    """A project the simulator does not host answers 403 OMS.0206."""
    async with sim_client(simulator, project_id="f" * 32) as client:
        answer = await client.list()
    assert (answer.status, answer.error_code) == (403, "OMS.0206")


async def test_projects_have_their_own_tasks(make_simulator: SimulatorFactory) -> None:
    """Two hosted projects list different tasks; a task of one is unknown in the other."""
    a, b = "a" * 32, "b" * 32
    handle = await make_simulator(project_ids=(a, b), tasks_per_project=20)
    async with sim_client(handle, project_id=a) as client_a:
        ids_a = {t["id"] for t in (await client_a.list(limit=100)).json()["tasks"]}
        async with sim_client(handle, project_id=b) as client_b:
            ids_b = {t["id"] for t in (await client_b.list(limit=100)).json()["tasks"]}
            cross = await client_b.show(next(iter(ids_a)))
    assert len(ids_a) == len(ids_b) == 20
    assert ids_a.isdisjoint(ids_b)
    assert cross.error_code == "OMS.1009"


# --- authentication -------------------------------------------------------------------


def _temporary_credentials() -> SimCredentials:
    return SimCredentials(
        access_keys=(
            SimAccessKey(access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY),
            SimAccessKey(access_key=TEMP_AK, secret_key=TEMP_SK, security_token=TEMP_TOKEN),
        )
    )


TEMP_GOOD = AkSk(TEMP_AK, SecretStr(TEMP_SK), SecretStr(TEMP_TOKEN))


@pytest.mark.parametrize(
    ("credentials", "principal"),
    [
        (DEFAULT_AKSK, DEFAULT_ACCESS_KEY),
        (DEFAULT_TOKEN, "iam-token"),
        (TEMP_GOOD, TEMP_AK),
    ],
    ids=["aksk", "iam-token", "temporary-aksk"],
)
async def test_good_credentials_are_accepted_and_recorded(
    make_simulator: SimulatorFactory, credentials: AkSk | IamToken, principal: str
) -> None:
    """AK/SK, IAM token and temporary AK/SK all work; the deletion records who deleted."""
    handle = await make_simulator(credentials=_temporary_credentials(), population=FINISHED_ONLY)
    async with sim_client(handle, credentials=credentials) as client:
        task_id = await _first_id(client)
        answer = await client.delete(task_id)
        state = await client.sim_state()
    assert answer.status == 200
    assert state["deletions"][0]["task_id"] == task_id
    assert state["deletions"][0]["by"] == principal
    assert state["deletions"][0]["project_id"] == DEFAULT_PROJECT_ID


def _drop_token(headers: dict[str, str]) -> None:
    del headers["X-Security-Token"]


def _swap_token(headers: dict[str, str]) -> None:
    headers["X-Security-Token"] = "SECURITYTOKEN-OTHER"


def _change_path_header(headers: dict[str, str]) -> None:
    headers["X-Project-Id"] = "f" * 32


def _bad_signature(headers: dict[str, str]) -> None:
    headers["Authorization"] = headers["Authorization"][:-4] + "0000"


def _basic_auth(headers: dict[str, str]) -> None:
    headers["Authorization"] = "Basic dXNlcjpwYXNz"


def _no_auth(headers: dict[str, str]) -> None:
    del headers["Authorization"]


@pytest.mark.parametrize(
    ("credentials", "tamper", "extra", "reason"),
    [
        (AkSk(DEFAULT_ACCESS_KEY, SecretStr("wrong-secret")), None, None, "signature"),
        (AkSk("AKUNKNOWNAKUNKNOWN01", SecretStr(DEFAULT_SECRET_KEY)), None, None, "access key"),
        (DEFAULT_AKSK, _bad_signature, None, "signature"),
        (DEFAULT_AKSK, _change_path_header, None, "signature"),
        (DEFAULT_AKSK, _basic_auth, None, "SDK-HMAC-SHA256"),
        (DEFAULT_AKSK, _no_auth, None, "no Authorization"),
        (IamToken(SecretStr("not-the-token")), None, None, "token"),
        (AkSk(TEMP_AK, SecretStr(TEMP_SK)), None, None, "security token"),
        (TEMP_GOOD, _drop_token, None, "signature"),
        (TEMP_GOOD, _swap_token, None, "signature"),
        (DEFAULT_AKSK, None, {"X-Security-Token": TEMP_TOKEN}, "permanent"),
    ],
    ids=[
        "wrong-sk",
        "unknown-ak",
        "bad-signature",
        "tampered-signed-header",
        "not-hmac",
        "no-auth",
        "wrong-iam-token",
        "temporary-ak-without-token",
        "token-removed-after-signing",
        "token-swapped-after-signing",
        "token-with-permanent-key",
    ],
)
async def test_bad_credentials_answer_401_apig_0301(
    make_simulator: SimulatorFactory,
    credentials: AkSk | IamToken,
    tamper: Any,
    extra: dict[str, str] | None,
    reason: str,
) -> None:
    """Every forged, wrong or incomplete credential is 401 APIG.0301; no secret is echoed."""
    handle = await make_simulator(credentials=_temporary_credentials())
    async with sim_client(handle, credentials=credentials) as client:
        answer = await client.request(
            "GET", client.tasks_path(), tamper=tamper, extra_headers=extra
        )
        state = await client.sim_state()
    assert (answer.status, answer.error_code) == (401, "APIG.0301")
    body = answer.body.decode()
    assert reason in body
    for secret in (DEFAULT_SECRET_KEY, TEMP_SK, TEMP_TOKEN, DEFAULT_IAM_TOKEN, "wrong-secret"):
        assert secret not in body
    assert state["rejected"]["auth"] == 1
    assert state["requests"]["list"] == 0


async def test_unsigned_security_token_is_rejected(make_simulator: SimulatorFactory) -> None:
    """A right token that was not among the signed headers is not accepted."""
    handle = await make_simulator(credentials=_temporary_credentials())
    unsigned = AkSk(TEMP_AK, SecretStr(TEMP_SK))

    def add_token(headers: dict[str, str]) -> None:
        headers["X-Security-Token"] = TEMP_TOKEN

    async with sim_client(handle, credentials=unsigned) as client:
        answer = await client.request("GET", client.tasks_path(), tamper=add_token)
    assert (answer.status, answer.error_code) == (401, "APIG.0301")


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [
        (timedelta(minutes=14), True),
        (timedelta(minutes=-14), True),
        (timedelta(minutes=16), False),
        (timedelta(minutes=-16), False),
    ],
)
async def test_sdk_date_must_be_close_to_the_simulator_clock(
    make_simulator: SimulatorFactory, fake_clock: FakeClock, skew: timedelta, accepted: bool
) -> None:
    """X-Sdk-Date further than 15 minutes from the simulator's clock is 401 and says so."""
    handle = await make_simulator(now=fake_clock.now)
    async with sim_client(handle) as client:
        answer = await client.request("GET", client.tasks_path(), signed_at=fake_clock.now() + skew)
    if accepted:
        assert answer.status == 200
    else:
        assert (answer.status, answer.error_code) == (401, "APIG.0301")
        assert "15 minutes" in answer.json()["error_msg"]


async def test_iam_token_expires_after_n_requests(make_simulator: SimulatorFactory) -> None:
    """With token_expires_after=2 the third request with the token is 401."""
    from worker.simulator.faults import FaultConfig

    handle = await make_simulator(faults=FaultConfig(token_expires_after=2))
    async with sim_client(handle, credentials=DEFAULT_TOKEN) as client:
        statuses = [(await client.list()).status for _ in range(4)]
    assert statuses == [200, 200, 401, 401]


# --- admin view -----------------------------------------------------------------------


async def test_admin_view_counts_requests_and_remaining_tasks(
    make_simulator: SimulatorFactory,
) -> None:
    """/_sim/state counts calls by kind, rejections, stops, deletions and what is left."""
    handle = await make_simulator(
        tasks_per_project=10, population=PopulationConfig(status_weights=((2, 1.0), (4, 1.0)))
    )
    async with sim_client(handle) as client:
        tasks = (await client.list(limit=100)).json()["tasks"]
        running = [t["id"] for t in tasks if t["status"] == 2]
        failed = [t["id"] for t in tasks if t["status"] == 4]
        await client.show(failed[0])
        await client.delete(failed[0])
        await client.delete(running[0])
        await client.stop(running[0])
        await client.request("GET", client.tasks_path(), credentials=IamToken(SecretStr("bad")))
        state = await client.sim_state()
    assert state["requests"] == {"list": 1, "show": 1, "delete": 2, "stop": 1}
    assert state["rejected"]["auth"] == 1
    assert [d["task_id"] for d in state["deletions"]] == [failed[0]]
    assert [s["task_id"] for s in state["stops"]] == [running[0]]
    assert [(r["task_id"], r["status"]) for r in state["refused_deletes"]] == [(running[0], 2)]
    expected = {"2": len(running) - 1, "4": len(failed) - 1, "7": 1}
    by_status = state["remaining"][DEFAULT_PROJECT_ID]["by_status"]
    assert by_status == {code: n for code, n in expected.items() if n}
    assert handle.app[STATE_KEY] is handle.state


# --- the official SDK as a peer -------------------------------------------------------


def _sdk_round_trip(url: str) -> tuple[int, int, int, str | None]:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkoms.v2 import (
        DeleteTaskRequest,
        ListTasksRequest,
        OmsClient,
        ShowTaskRequest,
    )

    client = (
        OmsClient.new_builder()
        .with_credentials(
            BasicCredentials(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, DEFAULT_PROJECT_ID)
        )
        .with_endpoints([url])
        .build()
    )
    listed = client.list_tasks(ListTasksRequest(limit=5, offset=0, status=5))
    task_id = listed.tasks[0].id
    shown = client.show_task(ShowTaskRequest(task_id=task_id))
    client.delete_task(DeleteTaskRequest(task_id=task_id))
    try:
        client.delete_task(DeleteTaskRequest(task_id=task_id))
    except ClientRequestException as exc:
        code = exc.error_code
    else:
        code = None
    return listed.count, len(listed.tasks), shown.id, code


async def test_the_official_sdk_can_list_show_and_delete(
    simulator: SimulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huaweicloudsdkoms signs, lists, shows and deletes against the simulator."""
    monkeypatch.setenv("HOME", str(tmp_path))
    count, page, shown, second_delete = await asyncio.to_thread(_sdk_round_trip, simulator.url)
    assert page == 5
    assert count == simulator.state.remaining()[DEFAULT_PROJECT_ID]["by_status"]["5"] + 1
    assert [d.task_id for d in simulator.state.deletions] == [shown]
    assert second_delete == "OMS.1009"


async def test_answers_follow_the_clock_not_a_stale_encoding(
    make_simulator: SimulatorFactory, fake_clock: FakeClock
) -> None:
    """A task read before and after it finishes is answered with its new status both ways."""
    from worker.simulator.config import TimingConfig

    handle = await make_simulator(
        now=fake_clock.now,
        tasks_per_project=5,
        population=PopulationConfig(status_weights=((2, 1.0),)),
        timing=TimingConfig(
            finish_after=(timedelta(seconds=10), timedelta(seconds=10)), failed_share=0.0
        ),
    )
    async with sim_client(handle, now=fake_clock.now) as client:
        before = (await client.list()).json()["tasks"]
        task_id = before[0]["id"]
        shown_before = (await client.show(task_id)).json()
        fake_clock.advance(timedelta(seconds=10))
        after = (await client.list()).json()["tasks"]
        shown_after = (await client.show(task_id)).json()
    assert {t["status"] for t in before} == {2}
    assert shown_before["status"] == 2
    assert {t["status"] for t in after} == {5}
    assert {t["progress"] for t in after} == {1.0}
    assert (shown_after["status"], shown_after["left_time"]) == (5, 0)
