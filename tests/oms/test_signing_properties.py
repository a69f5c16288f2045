"""Properties: the client's signer and the simulator's verifier agree, and any change breaks it.

The signer is `worker.oms.auth.auth_headers` (what OmsClient adds to every send); the verifier
is `worker.oms.signing.verify`, fed the way the simulator feeds it: the Authorization header
parsed, the query as a server parses the sent query string, header names in any case.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.oms import signing
from worker.oms.auth import AkSk, auth_headers
from worker.oms.client import ClientConfig, OmsClient
from worker.oms.errors import AuthFailed
from worker.oms.retry import RetryPolicy
from worker.simulator.config import SimulatorConfig
from worker.simulator.population import PopulationConfig
from worker.simulator.server import SimulatorHandle, run_simulator

from .conftest import AK, PID, SK

METHODS = ("GET", "DELETE", "POST", "PUT", "PATCH", "HEAD")
# Headers the signer sets itself, or that carry the signature: not drawn as extras.
RESERVED = frozenset(
    {"host", "x-sdk-date", "authorization", "x-security-token", "content-type", "x-project-id"}
)

# Any character a str can carry on the wire (lone surrogates cannot be UTF-8 encoded).
_TEXT = st.characters(exclude_categories=["Cs"])
# A few names that matter to OMS and some that sort around them, so keys repeat often.
_KEYS = st.one_of(
    st.sampled_from(["limit", "offset", "status", "task_name", "group_id", "", "a b", "é"]),
    st.text(_TEXT, max_size=8),
)
_VALUES = st.one_of(
    st.sampled_from(["", " ", "+", "%20", "&", "=", "a/b", "nightly copy/é", "~*'()!"]),
    st.text(_TEXT, max_size=12),
)
# HTTP header values: visible ASCII and inner spaces (no CR/LF, which no server would accept).
_HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
_HEADER_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}(_[A-Za-z0-9]{1,4})?", fullmatch=True)


@dataclasses.dataclass(frozen=True)
class Received:
    """A signed request as the verifier sees it, and the SK it verifies with."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes
    secret_key: str
    authorization: signing.ParsedAuthorization

    def verifies(self) -> bool:
        """What the simulator's auth check decides for this request."""
        return signing.verify(
            authorization=self.authorization,
            secret_key=self.secret_key,
            method=self.method,
            path=self.path,
            query=list(self.query),
            headers=self.headers,
            body=self.body,
        )


def _as_server_parses(query: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The query string the client sends (canonical order and encoding), parsed back by yarl."""
    sent = signing.canonical_query(query)
    return tuple(yarl.URL.build(path="/", query_string=sent, encoded=True).query.items())


@st.composite
def signed_requests(draw: st.DrawFn) -> Received:
    """A request signed by auth_headers with random path, query, headers and credentials."""
    method = draw(st.sampled_from(METHODS))
    segments = draw(st.lists(st.text(_TEXT, min_size=1, max_size=10), min_size=1, max_size=4))
    path = "/" + "/".join(segment.replace("/", "") or "x" for segment in segments)
    query = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=6))
    extras = draw(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4))
    # Header names are case-insensitive: one spelling per name, none the signer sets itself.
    unique = {name.lower(): (name, value) for name, value in extras.items()}
    headers = {"Content-Type": "application/json", "X-Project-Id": PID}
    headers.update(pair for key, pair in unique.items() if key not in RESERVED)
    token = draw(st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
    credentials = AkSk(
        access_key=AK,
        secret_key=SecretStr(SK),
        security_token=SecretStr(token) if token else None,
    )
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)))
    host = draw(st.sampled_from(["oms.cn-north-4.myhuaweicloud.com", "127.0.0.1:8443"]))
    added = auth_headers(
        credentials,
        method=method,
        host=host,
        path=path,
        query=query,
        headers=headers,
        body=b"",
        now=moment,
    )
    parsed = signing.parse_authorization(added["Authorization"])
    assert parsed is not None
    assert parsed.access_key == AK
    sent = {**headers, **added}
    # aiohttp hands the simulator header names in whatever case they were sent (and values
    # stripped of surrounding whitespace, as HTTP requires): lower the names to show case
    # does not matter.
    received = {name.lower(): value for name, value in sent.items()}
    return Received(
        method=method,
        path=path,
        query=_as_server_parses(query),
        headers=received,
        body=b"",
        secret_key=SK,
        authorization=parsed,
    )


@settings(max_examples=200, deadline=None)
@given(request=signed_requests(), order=st.randoms(use_true_random=False))
def test_signer_and_verifier_agree(request: Received, order: random.Random) -> None:
    """Whatever the path, query, headers or credentials, what auth_headers signs verifies."""
    assert request.verifies()
    shuffled = list(request.query)
    order.shuffle(shuffled)
    assert dataclasses.replace(request, query=tuple(shuffled)).verifies()


@settings(max_examples=100, deadline=None)
@given(request=signed_requests(), name=_HEADER_NAMES, value=_HEADER_VALUES)
def test_unsigned_headers_may_change(request: Received, name: str, value: str) -> None:
    """Headers outside SignedHeaders (e.g. with '_', or added by a proxy) do not matter."""
    key = name.lower()
    if key in request.authorization.signed_headers:
        key += "_unsigned"
    assert request.verifies()
    assert dataclasses.replace(request, headers={**request.headers, key: value}).verifies()


Mutation = Callable[[Received, st.DataObject], Received]


def _other_method(r: Received, data: st.DataObject) -> Received:
    others = [m for m in METHODS if m != r.method.upper()]
    return dataclasses.replace(r, method=data.draw(st.sampled_from(others)))


def _other_path(r: Received, data: st.DataObject) -> Received:
    segments = r.path.split("/")
    index = data.draw(st.integers(1, len(segments) - 1))
    extra = data.draw(st.text(_TEXT, min_size=1, max_size=3).filter(lambda t: "/" not in t))
    segments[index] += extra
    return dataclasses.replace(r, path="/".join(segments))


def _other_query_key(r: Received, data: st.DataObject) -> Received:
    if not r.query:
        return dataclasses.replace(r, query=(data.draw(st.tuples(_KEYS, _VALUES)),))
    index = data.draw(st.integers(0, len(r.query) - 1))
    key, value = r.query[index]
    changed = (key + data.draw(st.text(_TEXT, min_size=1, max_size=3)), value)
    return dataclasses.replace(r, query=(*r.query[:index], changed, *r.query[index + 1 :]))


def _other_query_value(r: Received, data: st.DataObject) -> Received:
    if not r.query:
        return dataclasses.replace(r, query=(("task_name", ""),))
    index = data.draw(st.integers(0, len(r.query) - 1))
    key, value = r.query[index]
    changed = (key, data.draw(_VALUES.filter(lambda v: v != value)))
    return dataclasses.replace(r, query=(*r.query[:index], changed, *r.query[index + 1 :]))


def _dropped_query_pair(r: Received, data: st.DataObject) -> Received:
    if not r.query:
        return dataclasses.replace(r, query=(("limit", "100"),))
    index = data.draw(st.integers(0, len(r.query) - 1))
    return dataclasses.replace(r, query=r.query[:index] + r.query[index + 1 :])


def _other_signed_header_value(r: Received, data: st.DataObject) -> Received:
    name = data.draw(st.sampled_from(r.authorization.signed_headers))
    extra = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
    return dataclasses.replace(r, headers={**r.headers, name: r.headers[name].strip() + extra})


def _missing_signed_header(r: Received, data: st.DataObject) -> Received:
    name = data.draw(st.sampled_from(r.authorization.signed_headers))
    return dataclasses.replace(r, headers={k: v for k, v in r.headers.items() if k != name})


def _other_date(r: Received, data: st.DataObject) -> Received:
    signed_at = signing.parse_sdk_date(r.headers["x-sdk-date"].strip())
    shift = timedelta(
        seconds=data.draw(st.integers(1, 86_400)) * data.draw(st.sampled_from([-1, 1]))
    )
    later = signing.format_sdk_date(signed_at + shift)
    return dataclasses.replace(r, headers={**r.headers, "x-sdk-date": later})


def _other_body(r: Received, data: st.DataObject) -> Received:
    return dataclasses.replace(r, body=data.draw(st.binary(min_size=1, max_size=64)))


def _other_secret(r: Received, data: st.DataObject) -> Received:
    return dataclasses.replace(r, secret_key=data.draw(st.text(_TEXT).filter(lambda s: s != SK)))


def _other_signature(r: Received, data: st.DataObject) -> Received:
    sig = r.authorization.signature
    index = data.draw(st.integers(0, len(sig) - 1))
    flipped = sig[:index] + ("0" if sig[index] != "0" else "1") + sig[index + 1 :]
    return dataclasses.replace(
        r, authorization=dataclasses.replace(r.authorization, signature=flipped)
    )


MUTATIONS: dict[str, Mutation] = {
    "method": _other_method,
    "path": _other_path,
    "query key": _other_query_key,
    "query value": _other_query_value,
    "query pair dropped": _dropped_query_pair,
    "signed header value": _other_signed_header_value,
    "signed header missing": _missing_signed_header,
    "date": _other_date,
    "body hash": _other_body,
    "secret key": _other_secret,
    "signature": _other_signature,
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(max_examples=60, deadline=None)
@given(request=signed_requests(), data=st.data())
def test_any_change_to_a_signed_part_fails_verification(
    mutation: str, request: Received, data: st.DataObject
) -> None:
    """Changing the method, path, query, a signed header, date, body, SK or signature is caught."""
    assert request.verifies()
    assert not MUTATIONS[mutation](request, data).verifies()


# --- over a real socket -----------------------------------------------------------------


@pytest.fixture
async def named_simulator() -> AsyncIterator[SimulatorHandle]:
    """A small simulator whose names include the population's unicode ones."""
    config = SimulatorConfig(
        tasks_per_project=60, population=PopulationConfig(unicode_name_share=0.5)
    )
    async with run_simulator(config) as handle:
        yield handle


_NAME_TEXT = st.text(_TEXT, max_size=16)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_the_client_is_accepted_by_the_simulator_for_any_task_name(
    named_simulator: SimulatorHandle, data: st.DataObject
) -> None:
    """OmsClient's signed list with a random task_name is accepted and filtered as asked."""
    handle = named_simulator
    tasks = list(handle.state.projects[PID].tasks.values())
    names = [task["name"] for task in tasks]
    # Half the time a slice of a real name, so the filter also has something to match.
    needle = data.draw(
        _NAME_TEXT
        | st.sampled_from(names).flatmap(
            lambda n: st.tuples(st.integers(0, len(n)), st.integers(0, len(n))).map(
                lambda ij: n[min(ij) : max(ij)]
            )
        )
    )
    config = ClientConfig(
        endpoint=yarl.URL(handle.url), project_id=PID, retry=RetryPolicy(max_attempts=1)
    )
    credentials = AkSk(access_key=AK, secret_key=SecretStr(SK))
    rejected_before = handle.state.rejected["auth"]
    async with OmsClient(config, credentials=credentials) as client:
        try:
            page = await client.list_tasks(limit=100, task_name=needle)
        except AuthFailed as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"signature rejected for task_name={needle!r}: {exc}")
    assert handle.state.rejected["auth"] == rejected_before
    expected = sorted(t["id"] for t in tasks if needle.casefold() in t["name"].casefold())
    assert sorted(task.id for task in page.tasks) == expected
    assert page.count == len(expected)
