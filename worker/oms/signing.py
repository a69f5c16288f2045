"""AK/SK request signing (`SDK-HMAC-SHA256`), exactly as the official Huawei SDK signs.

Pure functions, no I/O: the client signs with them and the simulator verifies with them,
so one canonicalisation serves both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "SDK-HMAC-SHA256"
DATE_HEADER = "X-Sdk-Date"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

_AUTH_RE = re.compile(
    r"^SDK-HMAC-SHA256\s+Access=(?P<access>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]+)$"
)


def format_sdk_date(moment: datetime) -> str:
    """Render a moment the way the SDK writes `X-Sdk-Date`."""
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def parse_sdk_date(value: str) -> datetime:
    """Parse an `X-Sdk-Date` value; raises ValueError when malformed."""
    return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)


def _encode(value: str) -> str:
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    """Each segment percent-encoded with only `~` safe, and a trailing `/` appended."""
    encoded = "/".join(_encode(segment) for segment in path.split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """`key=value` pairs, each side encoded with only `~` safe, sorted, joined by `&`."""
    return "&".join(sorted(f"{_encode(k)}={_encode(v)}" for k, v in params))


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Every header whose name has no `_`, lower-cased and sorted."""
    return sorted({name.lower() for name in headers if "_" not in name})


def canonical_request(
    *,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: list[str],
    body: bytes,
) -> str:
    """The canonical request text that the string to sign hashes."""
    lowered = {name.lower(): value for name, value in headers.items()}
    header_block = "".join(f"{name}:{lowered[name].strip()}\n" for name in signed_headers)
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            header_block,
            ";".join(signed_headers),
            body_hash,
        ]
    )


def signature(*, secret_key: str, sdk_date: str, canonical: str) -> str:
    """Lowercase hex HMAC-SHA256 of the string to sign, keyed with the SK."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def sign(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes = b"",
) -> str:
    """Return the `Authorization` value for a request.

    `headers` must already hold `Host` and `X-Sdk-Date` (and every other header that
    will be sent and signed); the caller sends exactly these headers.
    """
    names = signed_header_names(headers)
    canonical = canonical_request(
        method=method, path=path, query=query, headers=headers, signed_headers=names, body=body
    )
    sdk_date = _header(headers, DATE_HEADER)
    sig = signature(secret_key=secret_key, sdk_date=sdk_date, canonical=canonical)
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={sig}"


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The three parts of an `Authorization: SDK-HMAC-SHA256 ...` header."""

    access_key: str
    signed_headers: list[str]
    signature: str

    def __repr__(self) -> str:
        return f"ParsedAuthorization(access_key={self.access_key!r}, signature='***')"


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Split an Authorization header; None when it is not an SDK-HMAC-SHA256 one."""
    match = _AUTH_RE.match(value.strip())
    if match is None:
        return None
    return ParsedAuthorization(
        access_key=match["access"],
        signed_headers=match["signed"].split(";"),
        signature=match["signature"],
    )


def verify(
    *,
    authorization: ParsedAuthorization,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
) -> bool:
    """Recompute the signature over the headers the client says it signed; compare safely."""
    lowered = {name.lower(): value for name, value in headers.items()}
    names = authorization.signed_headers
    required = {"host", DATE_HEADER.lower()}
    if not required.issubset(names) or any(name not in lowered for name in names):
        return False
    canonical = canonical_request(
        method=method, path=path, query=query, headers=lowered, signed_headers=names, body=body
    )
    expected = signature(
        secret_key=secret_key, sdk_date=lowered[DATE_HEADER.lower()], canonical=canonical
    )
    return hmac.compare_digest(expected, authorization.signature)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    raise KeyError(name)
