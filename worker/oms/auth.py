"""Credentials the client can sign with, and the headers each kind adds to a request.

Values hold secrets as `pydantic.SecretStr`, so a repr, an f-string or a log line shows
`**********`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from worker.oms import signing


@dataclass(frozen=True, slots=True)
class AkSk:
    """A permanent AK/SK pair, or a temporary one when `security_token` is set."""

    access_key: str
    secret_key: SecretStr
    security_token: SecretStr | None = None


@dataclass(frozen=True, slots=True)
class IamToken:
    """An IAM token sent as `X-Auth-Token`."""

    token: SecretStr


Credentials = AkSk | IamToken


def auth_headers(
    credentials: Credentials,
    *,
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> dict[str, str]:
    """The headers to add so that a request authenticates; fresh for every send.

    `host` is the URL's host with the port when it has one; `headers` are the others
    that will be sent (they are signed too).
    """
    if isinstance(credentials, IamToken):
        return {"X-Auth-Token": credentials.token.get_secret_value()}
    added = {"Host": host, signing.DATE_HEADER: signing.format_sdk_date(now)}
    if credentials.security_token is not None:
        added["X-Security-Token"] = credentials.security_token.get_secret_value()
    to_sign = {**headers, **added}
    added["Authorization"] = signing.sign(
        access_key=credentials.access_key,
        secret_key=credentials.secret_key.get_secret_value(),
        method=method,
        path=path,
        query=query,
        headers=to_sign,
        body=body,
    )
    return added


def credential_mode(credentials: Credentials) -> str:
    """Which kind of credentials, without any of their values."""
    if isinstance(credentials, IamToken):
        return "iam_token"
    return "ak_sk_temporary" if credentials.security_token is not None else "ak_sk"
