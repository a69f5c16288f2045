"""Where the OMS API lives: a region name or an explicit URL, checked before anything is sent."""

from __future__ import annotations

import ipaddress
import re

import yarl

# Huawei region names: a two-letter area, one or more words, a number (cn-north-4, eu-west-101).
_REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,3}$")


def resolve_endpoint(
    *, region: str | None, endpoint: str | None, allow_insecure_http: bool
) -> yarl.URL:
    """The base URL of the OMS API from exactly one of a region name or an explicit URL.

    An explicit URL keeps its path prefix without a trailing slash (so request paths append
    cleanly). Plain http is refused except to loopback addresses, because the credentials and
    the signed requests would otherwise cross the network in clear, unless explicitly allowed.
    Blank strings count as not given, so an empty environment variable does not select a mode.
    """
    region = region.strip() if region is not None else ""
    endpoint = endpoint.strip() if endpoint is not None else ""
    if region and endpoint:
        raise ValueError("give either a region or an endpoint URL, not both")
    if region:
        return _region_url(region)
    if endpoint:
        return _explicit_url(endpoint, allow_insecure_http=allow_insecure_http)
    raise ValueError("give a region (e.g. 'cn-north-4') or an endpoint URL")


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address stays on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _region_url(region: str) -> yarl.URL:
    if not _REGION_RE.fullmatch(region):
        raise ValueError(f"region {region!r} is not a region name like 'cn-north-4'")
    return yarl.URL.build(scheme="https", host=f"oms.{region}.myhuaweicloud.com")


def _explicit_url(text: str, *, allow_insecure_http: bool) -> yarl.URL:
    try:
        url = yarl.URL(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"endpoint {text!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {text!r} must start with https:// (or http:// for loopback)")
    if not url.host:
        raise ValueError(f"endpoint {text!r} has no host")
    if url.user is not None or url.password is not None:
        # Credentials embedded in a URL end up in logs and reports.
        raise ValueError("endpoint must not contain a user name or password")
    if url.query_string:
        raise ValueError(f"endpoint {text!r} must not have a query string")
    if url.fragment:
        raise ValueError(f"endpoint {text!r} must not have a fragment")
    if url.scheme == "http" and not allow_insecure_http and not is_loopback_host(url.host):
        raise ValueError(
            f"endpoint {text!r} uses plain http to a non-loopback host; use https, "
            "or allow insecure http explicitly"
        )
    return yarl.URL.build(
        scheme=url.scheme,
        host=url.host,
        port=url.explicit_port,
        path=url.path.rstrip("/"),
        encoded=False,
    )
