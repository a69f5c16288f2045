"""Credential values and the headers each kind adds to a request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.oms import signing
from worker.oms.auth import AkSk, Credentials, auth_headers

from .conftest import AK, AKSK, AKSK_TEMPORARY, IAM_TOKEN, PID, SECRETS, SK, TOKEN

BASE_HEADERS = {"Content-Type": "application/json", "X-Project-Id": PID}
NOW = datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)


def _headers(credentials: Credentials, now: datetime = NOW) -> dict[str, str]:
    return auth_headers(
        credentials,
        method="DELETE",
        host="oms.cn-north-4.myhuaweicloud.com",
        path=f"/v2/{PID}/tasks/191297407830872",
        query=[],
        headers=BASE_HEADERS,
        body=b"",
        now=now,
    )


def test_aksk_headers_match_the_golden_delete_vector() -> None:
    """AK/SK credentials add Host, X-Sdk-Date and the SDK's Authorization for that moment."""
    added = _headers(AKSK)
    assert added == {
        "Host": "oms.cn-north-4.myhuaweicloud.com",
        "X-Sdk-Date": "20261127T120001Z",
        "Authorization": (
            f"SDK-HMAC-SHA256 Access={AK}, "
            "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
            "Signature=e73dec3c59799ecade6e472512dd3b69161ce9179a3068af02ea93cb331a7c67"
        ),
    }


def test_temporary_credentials_add_and_sign_the_security_token() -> None:
    """A security token is sent as X-Security-Token and is one of the signed headers."""
    added = _headers(AKSK_TEMPORARY)
    assert AKSK_TEMPORARY.security_token is not None
    assert added["X-Security-Token"] == AKSK_TEMPORARY.security_token.get_secret_value()
    parsed = signing.parse_authorization(added["Authorization"])
    assert parsed is not None
    assert "x-security-token" in parsed.signed_headers


def test_iam_token_adds_only_the_token_header() -> None:
    """An IAM token is sent as X-Auth-Token, with no date and no signature."""
    assert _headers(TOKEN) == {"X-Auth-Token": IAM_TOKEN}


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW, "20261127T120001Z"),
        (NOW.astimezone(timezone(timedelta(hours=8))), "20261127T120001Z"),
        (NOW + timedelta(days=1, seconds=59), "20261128T120100Z"),
    ],
)
def test_sdk_date_is_the_injected_moment_in_utc(now: datetime, expected: str) -> None:
    """X-Sdk-Date renders the given clock reading in UTC whatever its zone."""
    assert _headers(AKSK, now)["X-Sdk-Date"] == expected


@pytest.mark.parametrize("credentials", [AKSK, AKSK_TEMPORARY, TOKEN], ids=["aksk", "sts", "iam"])
def test_credential_reprs_and_strings_hide_secrets(credentials: Credentials) -> None:
    """repr(), str() and f-strings of credentials never show the SK or a token."""
    shown = [repr(credentials), str(credentials), f"{credentials}"]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text


def test_aksk_is_frozen() -> None:
    """Credential values cannot be changed after construction."""
    with pytest.raises(AttributeError):
        AKSK.access_key = "other"  # type: ignore[misc]
    assert isinstance(AKSK, AkSk)
    assert AKSK.secret_key.get_secret_value() == SK
