"""The OMS-compatible HTTP API: the four task calls, gateway auth and faults, and /_sim/state.

Each API request goes through the gateway steps in the real order: authentication (401),
the rate limit (429), injected faults, the project check (403), then the OMS call itself.
Every response, errors included, carries an `X-Request-Id`. Nothing is logged per request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from worker.oms import signing
from worker.simulator.config import SimulatorConfig
from worker.simulator.faults import (
    NO_FAULTS,
    FaultInjector,
    FaultPlan,
    SlidingWindow,
    malformed_list_answer,
    retry_after_header,
    throttle_message,
)
from worker.simulator.state import INVALID_PARAMETERS, ApiRefusal, SimulatorState

AUTH_FAILED = "APIG.0301"
THROTTLED = "APIG.0308"
API_NOT_FOUND = "APIG.0101"
NO_PERMISSION = "OMS.0206"
SERVER_ERROR = "OMS.2004"
BAD_GATEWAY = "APIG.0202"
IAM_TOKEN_PRINCIPAL = "iam-token"  # noqa: S105 (a label, not a secret)
REQUEST_ID_HEADER = "X-Request-Id"

STATE_KEY = web.AppKey("oms_simulator_state", SimulatorState)
CONFIG_KEY = web.AppKey("oms_simulator_config", SimulatorConfig)
_REQUEST_ID_KEY = web.RequestKey("oms_simulator_request_id", str)

_INT_RE = re.compile(r"-?\d{1,12}")
_ID_RE = re.compile(r"\d{1,19}")
_MAX_LIMIT = 100
# The documented filter range; 0 (the old API's "not started") is refused like the docs say.
_MIN_STATUS = 1
_MAX_STATUS = 7

Sleep = Callable[[float], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def utc_now() -> datetime:
    """The real clock, as an aware UTC datetime."""
    return datetime.now(UTC)


def _json_response(status: int, payload: Any) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type="application/json")


def _error(status: int, code: str, message: str, request_id: str) -> web.Response:
    payload: dict[str, str] = {"error_code": code, "error_msg": message}
    if code.startswith("APIG."):
        # Gateway errors carry the request id in the body as well as in the header.
        payload["request_id"] = request_id
    return _json_response(status, payload)


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4().hex
    request[_REQUEST_ID_KEY] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # Unknown paths and methods answer like the gateway, in JSON, not aiohttp's text page.
        message = "The API does not exist or has not been published in the environment."
        response = _error(exc.status, API_NOT_FOUND, message, request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@dataclass(frozen=True, slots=True)
class _Page:
    """A list call's result before encoding (a malformation fault needs the objects)."""

    project_id: str
    tasks: list[dict[str, Any]]
    count: int


class _Api:
    """Route handlers bound to one simulator's state, fault injector and clocks."""

    def __init__(
        self,
        config: SimulatorConfig,
        state: SimulatorState,
        *,
        sleep: Sleep,
        monotonic: Callable[[], float],
    ) -> None:
        self.config = config
        self.state = state
        self.sleep = sleep
        self.faults = FaultInjector(config.faults, seed=config.seed)
        limit = config.faults.rate_limit
        self.window = SlidingWindow(limit, clock=monotonic) if limit is not None else None

    # --- the four task calls -------------------------------------------------------------

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "list", self._list)

    async def show_task(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "show", self._show)

    async def delete_task(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "delete", self._delete)

    async def stop_task(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "stop", self._stop)

    def _list(self, request: web.Request, project_id: str, by: str) -> _Page:
        query = request.query
        limit = _int_param(query.get("limit"), "limit", default=10, low=1, high=_MAX_LIMIT)
        offset = _int_param(
            query.get("offset"), "offset", default=0, low=0, high=self.config.max_offset
        )
        status_raw = query.get("status")
        status = (
            None
            if status_raw is None
            else _int_param(status_raw, "status", default=0, low=_MIN_STATUS, high=_MAX_STATUS)
        )
        group_id = query.get("group_id") or None
        task_name = query.get("task_name") or None
        tasks, count = self.state.list_tasks(
            project_id,
            offset=offset,
            limit=limit,
            status=status,
            group_id=group_id,
            task_name=task_name,
        )
        # Tasks deleted below stay in this answer: it was read before they went.
        page = _Page(project_id, tasks, count)
        faults = self.config.faults
        if faults.other_deleter_per_page > 0:
            # After this page is answered someone else deletes tasks this listing has passed.
            self.state.delete_behind(
                project_id,
                before=offset + len(tasks),
                count=faults.other_deleter_per_page,
                states=faults.other_deleter_states,
                budget=faults.other_deleter_budget,
                status=status,
                group_id=group_id,
                task_name=task_name,
            )
        return page

    def _show(self, request: web.Request, project_id: str, by: str) -> bytes:
        task = self.state.show_task(project_id, _task_id(request))
        return self.state.projects[project_id].encoded(task)

    def _delete(self, request: web.Request, project_id: str, by: str) -> None:
        self.state.delete_task(project_id, _task_id(request), by=by)

    def _stop(self, request: web.Request, project_id: str, by: str) -> None:
        self.state.stop_task(project_id, _task_id(request), by=by)

    def _page_body(self, page: _Page) -> bytes:
        project = self.state.projects[page.project_id]
        tasks = b",".join(project.encoded(task) for task in page.tasks)
        return b'{"tasks":[' + tasks + b'],"count":' + str(page.count).encode() + b"}"

    # --- the gateway around them -------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        kind: str,
        call: Callable[[web.Request, str, str], _Page | bytes | None],
    ) -> web.StreamResponse:
        state = self.state
        project_id = request.match_info["project_id"]
        state.in_flight += 1
        state.in_flight_by_project[project_id] += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        state.peak_in_flight_by_project[project_id] = max(
            state.peak_in_flight_by_project[project_id], state.in_flight_by_project[project_id]
        )
        try:
            return await self._serve_counted(request, kind, call)
        finally:
            state.in_flight -= 1
            state.in_flight_by_project[project_id] -= 1

    async def _serve_counted(
        self,
        request: web.Request,
        kind: str,
        call: Callable[[web.Request, str, str], _Page | bytes | None],
    ) -> web.StreamResponse:
        request_id = request[_REQUEST_ID_KEY]
        state = self.state
        try:
            by = self._authenticate(request, await request.read())
        except ApiRefusal as refusal:
            state.rejected["auth"] += 1
            state.auth_refused_by_project[request.match_info["project_id"]] += 1
            if state.in_flight_at_first_auth_refusal is None:
                state.in_flight_at_first_auth_refusal = state.in_flight
            return _error(refusal.status, refusal.code, refusal.message, request_id)

        if self.window is not None:
            wait = self.window.admit()
            if wait is not None:
                state.rejected["throttled"] += 1
                response = _error(
                    429,
                    THROTTLED,
                    throttle_message(self.window.limit, stated=self.config.faults.state_limit),
                    request_id,
                )
                faults = self.config.faults
                if faults.retry_after:
                    stated = faults.retry_after_seconds
                    response.headers["Retry-After"] = (
                        retry_after_header(wait) if stated is None else str(stated)
                    )
                return response

        plan = self.faults.plan(is_list=kind == "list")
        if plan is not NO_FAULTS:
            early = await self._early_faults(request, plan, request_id)
            if early is not None:
                return early

        project_id = request.match_info["project_id"]
        if not state.hosts(project_id):
            state.rejected["forbidden"] += 1
            message = "You do not have permission to use OMS in this project."
            return _error(403, NO_PERMISSION, message, request_id)
        if kind in ("delete", "stop") and project_id in self.config.faults.read_only_projects:
            state.rejected["forbidden"] += 1
            message = "You do not have permission to perform this operation in this project."
            return _error(403, NO_PERMISSION, message, request_id)

        state.requests[kind] += 1
        payload: _Page | bytes | ApiRefusal | None
        try:
            payload = call(request, project_id, by)
        except ApiRefusal as refusal:
            payload = refusal
        if plan.drop and self.config.faults.drop_after_processing:
            state.rejected["dropped"] += 1
            return _drop(request)
        if isinstance(payload, ApiRefusal):
            return _error(payload.status, payload.code, payload.message, request_id)
        if isinstance(payload, _Page):
            if plan.malformation is not None:
                state.rejected["malformed"] += 1
                page = {"tasks": payload.tasks, "count": payload.count}
                status, content_type, body = malformed_list_answer(
                    plan.malformation, page, self.faults.rng
                )
                return web.Response(status=status, body=body, content_type=content_type)
            payload = self._page_body(payload)
        if payload is None:
            # Delete and stop answer 200 with an empty body, as the reference says.
            return web.Response(status=200)
        return web.Response(status=200, body=payload, content_type="application/json")

    async def _early_faults(
        self, request: web.Request, plan: FaultPlan, request_id: str
    ) -> web.StreamResponse | None:
        if plan.delay_seconds > 0:
            await self.sleep(plan.delay_seconds)
        if plan.drop and not self.config.faults.drop_after_processing:
            self.state.rejected["dropped"] += 1
            return _drop(request)
        if plan.server_error is not None:
            self.state.rejected["5xx"] += 1
            if plan.server_error == 502:
                return _error(502, BAD_GATEWAY, "Backend unavailable.", request_id)
            message = "System error. Try again later."
            return _error(plan.server_error, SERVER_ERROR, message, request_id)
        if plan.slow:
            await self.sleep(self.config.faults.slow_seconds)
        return None

    def _authenticate(self, request: web.Request, body: bytes) -> str:
        """The principal (access key or "iam-token"); ApiRefusal 401 APIG.0301 otherwise."""
        credentials = self.config.credentials
        headers = request.headers
        authorization = headers.get("Authorization")
        token = headers.get("X-Auth-Token")
        if authorization is None and token is not None:
            expected_token = credentials.iam_token
            if expected_token is None or not hmac.compare_digest(
                token.encode(), expected_token.encode()
            ):
                raise _auth_failed("the token is invalid.")
            self.state.iam_token_uses += 1
            expires_after = self.config.faults.token_expires_after
            if expires_after is not None and self.state.iam_token_uses > expires_after:
                raise _auth_failed("the token has expired.")
            return IAM_TOKEN_PRINCIPAL
        if authorization is None:
            raise _auth_failed("no Authorization or X-Auth-Token header.")
        parsed = signing.parse_authorization(authorization)
        if parsed is None:
            raise _auth_failed("the Authorization header is not SDK-HMAC-SHA256.")
        locked = self.state.locked_until.get(parsed.access_key)
        if locked is not None and self.state.now() < locked:
            raise _auth_failed("the access key is locked after repeated failures.")
        try:
            principal = self._verify_ak_sk(request, parsed, body)
        except ApiRefusal:
            self._count_key_failure(parsed.access_key)
            raise
        self.state.key_failures.pop(parsed.access_key, None)
        return principal

    def _count_key_failure(self, access_key: str) -> None:
        faults = self.config.faults
        failures = self.state.key_failures
        failures[access_key] += 1
        if faults.key_lockout_after is not None and failures[access_key] > faults.key_lockout_after:
            self.state.locked_until[access_key] = self.state.now() + timedelta(
                seconds=faults.key_lockout_seconds
            )

    def _verify_ak_sk(
        self, request: web.Request, parsed: signing.ParsedAuthorization, body: bytes
    ) -> str:
        """The access key of a request signed with a known, valid, unrevoked AK/SK."""
        credentials = self.config.credentials
        headers = request.headers
        key = credentials.key(parsed.access_key)
        if key is None:
            raise _auth_failed("the access key does not exist.")
        sdk_date = headers.get(signing.DATE_HEADER)
        if sdk_date is None:
            raise _auth_failed("the X-Sdk-Date header is missing.")
        try:
            signed_at = signing.parse_sdk_date(sdk_date)
        except ValueError:
            raise _auth_failed("the X-Sdk-Date header is malformed.") from None
        tolerance = self.config.date_tolerance
        if abs(self.state.now() - signed_at) > tolerance:
            minutes = int(tolerance.total_seconds() // 60)
            raise _auth_failed(
                f"the X-Sdk-Date is more than {minutes} minutes away from the server time."
            )
        valid = signing.verify(
            authorization=parsed,
            secret_key=key.secret_key,
            method=request.method,
            path=request.path,
            query=list(request.query.items()),
            headers=dict(headers.items()),
            body=body,
        )
        if not valid:
            raise _auth_failed("verify aksk signature fail.")
        sent_token = headers.get("X-Security-Token")
        if key.security_token is None:
            if sent_token is not None:
                raise _auth_failed("a security token was sent with a permanent access key.")
        elif (
            sent_token is None
            or "x-security-token" not in parsed.signed_headers
            or not hmac.compare_digest(sent_token.encode(), key.security_token.encode())
        ):
            raise _auth_failed("the security token is missing, unsigned or invalid.")
        revoked_after = self.config.faults.credentials_revoked_after
        if revoked_after is not None:
            if self.state.access_key_uses >= revoked_after:
                raise _auth_failed("the access key does not exist.")
            self.state.access_key_uses += 1
        return key.access_key

    async def sim_state(self, request: web.Request) -> web.Response:
        return _json_response(200, self.state.snapshot())


def _auth_failed(reason: str) -> ApiRefusal:
    return ApiRefusal(401, AUTH_FAILED, f"Incorrect IAM authentication information: {reason}")


def _drop(request: web.Request) -> web.Response:
    # Closing the transport answers nothing; the response object below is never written.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=200)


def _int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if _INT_RE.fullmatch(raw) is None or not low <= int(raw) <= high:
        raise ApiRefusal(
            400, INVALID_PARAMETERS, f"Invalid parameter {name}: must be an integer {low}-{high}."
        )
    return int(raw)


def _task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    if _ID_RE.fullmatch(raw) is None:
        raise ApiRefusal(400, INVALID_PARAMETERS, "Invalid parameter task_id: must be numeric.")
    return int(raw)


def create_app(
    config: SimulatorConfig,
    *,
    now: Callable[[], datetime] = utc_now,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The simulator's aiohttp application; its state is `app[STATE_KEY]`."""
    state = SimulatorState(config, now=now)
    api = _Api(config, state, sleep=sleep, monotonic=monotonic)
    app = web.Application(middlewares=[_request_id_middleware])
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_get("/v2/{project_id}/tasks", api.list_tasks)
    app.router.add_get("/v2/{project_id}/tasks/{task_id}", api.show_task)
    app.router.add_delete("/v2/{project_id}/tasks/{task_id}", api.delete_task)
    app.router.add_post("/v2/{project_id}/tasks/{task_id}/stop", api.stop_task)
    app.router.add_get("/_sim/state", api.sim_state)
    return app
