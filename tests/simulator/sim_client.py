"""A deliberately thin signed HTTP client for simulator tests: plain aiohttp over a real socket.

It signs with worker.oms.auth exactly as the official SDK does, and returns raw answers so tests
can look at status, headers and bytes. The project's OmsClient is not used here on purpose.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import yarl
from multidict import CIMultiDict
from pydantic import SecretStr

from worker.oms import signing
from worker.oms.auth import Credentials, IamToken, auth_headers
from worker.simulator.config import (
    DEFAULT_CLIENT_CREDENTIALS,
    DEFAULT_IAM_TOKEN,
    DEFAULT_PROJECT_ID,
)
from worker.simulator.server import SimulatorHandle

DEFAULT_AKSK = DEFAULT_CLIENT_CREDENTIALS
DEFAULT_TOKEN = IamToken(token=SecretStr(DEFAULT_IAM_TOKEN))


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer as received."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        """The OMS/APIG error code of an error body."""
        data = self.json()
        return data.get("error_code") if isinstance(data, dict) else None


class SimClient:
    """Signed requests against one simulator."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        handle: SimulatorHandle,
        *,
        credentials: Credentials = DEFAULT_AKSK,
        project_id: str = DEFAULT_PROJECT_ID,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.session = session
        self.handle = handle
        self.credentials = credentials
        self.project_id = project_id
        self.now = now

    async def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        *,
        credentials: Credentials | None = None,
        extra_headers: dict[str, str] | None = None,
        signed_at: datetime | None = None,
        tamper: Callable[[dict[str, str]], None] | None = None,
    ) -> Answer:
        """Send one signed request; `tamper` may alter the final headers before sending."""
        query = query or []
        url = yarl.URL(self.handle.url)
        host = f"{url.host}:{url.port}"
        headers = {"Content-Type": "application/json", "X-Project-Id": self.project_id}
        headers.update(extra_headers or {})
        headers.update(
            auth_headers(
                credentials or self.credentials,
                method=method,
                host=host,
                path=path,
                query=query,
                headers=headers,
                body=b"",
                now=signed_at or self.now(),
            )
        )
        if tamper is not None:
            tamper(headers)
        raw_query = signing.canonical_query(query)
        target = yarl.URL(
            f"{self.handle.url}{path}" + (f"?{raw_query}" if raw_query else ""), encoded=True
        )
        async with self.session.request(method, target, headers=headers) as response:
            body = await response.read()
            return Answer(response.status, CIMultiDict(response.headers), body)

    def tasks_path(self, task_id: int | str | None = None, *, project_id: str | None = None) -> str:
        """`/v2/{project}/tasks[/{id}]`."""
        base = f"/v2/{project_id or self.project_id}/tasks"
        return base if task_id is None else f"{base}/{task_id}"

    async def list(self, **params: int | str) -> Answer:
        """GET the task list with these query parameters."""
        query = [(key, str(value)) for key, value in params.items()]
        return await self.request("GET", self.tasks_path(), query)

    async def show(self, task_id: int | str) -> Answer:
        """GET one task."""
        return await self.request("GET", self.tasks_path(task_id))

    async def delete(self, task_id: int | str) -> Answer:
        """DELETE one task."""
        return await self.request("DELETE", self.tasks_path(task_id))

    async def stop(self, task_id: int | str) -> Answer:
        """POST stop for one task."""
        return await self.request("POST", self.tasks_path(task_id) + "/stop")

    async def sim_state(self) -> Any:
        """The unauthenticated admin view."""
        async with self.session.get(f"{self.handle.url}/_sim/state") as response:
            return await response.json()


@asynccontextmanager
async def sim_client(
    handle: SimulatorHandle,
    *,
    credentials: Credentials = DEFAULT_AKSK,
    project_id: str = DEFAULT_PROJECT_ID,
    now: Callable[[], datetime] | None = None,
) -> AsyncIterator[SimClient]:
    """A SimClient with its own session, closed on exit."""
    async with aiohttp.ClientSession() as session:
        yield SimClient(
            session,
            handle,
            credentials=credentials,
            project_id=project_id,
            now=now or (lambda: datetime.now(UTC)),
        )
