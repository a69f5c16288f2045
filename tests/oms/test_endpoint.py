"""resolve_endpoint: region names, explicit URLs, and where plain http is allowed."""

from __future__ import annotations

import pytest

from worker.oms.endpoint import is_loopback_host, resolve_endpoint


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("cn-north-4", "https://oms.cn-north-4.myhuaweicloud.com"),
        ("ap-southeast-1", "https://oms.ap-southeast-1.myhuaweicloud.com"),
        ("af-south-1", "https://oms.af-south-1.myhuaweicloud.com"),
        ("la-south-2", "https://oms.la-south-2.myhuaweicloud.com"),
        ("tr-west-1", "https://oms.tr-west-1.myhuaweicloud.com"),
        ("me-east-1", "https://oms.me-east-1.myhuaweicloud.com"),
        ("eu-west-101", "https://oms.eu-west-101.myhuaweicloud.com"),
        (" cn-north-4 ", "https://oms.cn-north-4.myhuaweicloud.com"),
    ],
)
def test_region_becomes_the_oms_host(region: str, expected: str) -> None:
    """A region name maps to https://oms.{region}.myhuaweicloud.com."""
    assert str(resolve_endpoint(region=region, endpoint=None, allow_insecure_http=False)) == (
        expected
    )


@pytest.mark.parametrize(
    "region",
    ["CN-North-4", "cn_north_4", "cnnorth4", "cn-north", "oms.cn-north-4", "cn-north-4/x", "c-n-1"],
)
def test_malformed_region_is_refused(region: str) -> None:
    """Anything not shaped like a region name is refused, naming the value."""
    with pytest.raises(ValueError, match="is not a region name"):
        resolve_endpoint(region=region, endpoint=None, allow_insecure_http=False)


@pytest.mark.parametrize(
    ("endpoint", "insecure", "expected"),
    [
        ("https://oms.example.com", False, "https://oms.example.com"),
        ("https://oms.example.com/", False, "https://oms.example.com"),
        ("https://OMS.Example.com:8443/", False, "https://oms.example.com:8443"),
        ("https://gw.example.com/oms/", False, "https://gw.example.com/oms"),
        ("https://gw.example.com/a/b//", False, "https://gw.example.com/a/b"),
        ("http://127.0.0.1:8080", False, "http://127.0.0.1:8080"),
        ("http://127.8.9.10:1/", False, "http://127.8.9.10:1"),
        ("http://localhost:9000/", False, "http://localhost:9000"),
        ("http://[::1]:9000", False, "http://[::1]:9000"),
        ("http://oms.internal:8080/", True, "http://oms.internal:8080"),
        ("http://10.0.0.5", True, "http://10.0.0.5"),
    ],
)
def test_explicit_endpoint_is_normalised(endpoint: str, insecure: bool, expected: str) -> None:
    """An explicit URL keeps scheme, host, port and path prefix, without the trailing slash."""
    url = resolve_endpoint(region=None, endpoint=endpoint, allow_insecure_http=insecure)
    assert str(url) == expected


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://oms.example.com", "must start with https://"),
        ("oms.example.com", "must start with https://"),
        ("https://", "has no host"),
        ("https://user:pw@oms.example.com", "user name or password"),
        ("https://oms.example.com/?limit=5", "query string"),
        ("https://oms.example.com/#top", "fragment"),
        ("http://oms.example.com", "plain http to a non-loopback host"),
        ("http://10.0.0.5:80", "plain http to a non-loopback host"),
        ("http://128.0.0.1", "plain http to a non-loopback host"),
        ("http://localhost.example.com", "plain http to a non-loopback host"),
        ("http://[::2]:1", "plain http to a non-loopback host"),
    ],
)
def test_unsafe_or_malformed_endpoint_is_refused(endpoint: str, message: str) -> None:
    """Wrong scheme, no host, credentials, query, fragment or remote plain http are refused."""
    with pytest.raises(ValueError, match=message):
        resolve_endpoint(region=None, endpoint=endpoint, allow_insecure_http=False)


@pytest.mark.parametrize(
    ("region", "endpoint", "message"),
    [
        ("cn-north-4", "https://oms.example.com", "not both"),
        (None, None, "give a region"),
        ("", "  ", "give a region"),
    ],
)
def test_exactly_one_of_region_and_endpoint(
    region: str | None, endpoint: str | None, message: str
) -> None:
    """Both or neither is an error; blank strings count as not given."""
    with pytest.raises(ValueError, match=message):
        resolve_endpoint(region=region, endpoint=endpoint, allow_insecure_http=True)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("128.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - a host to classify, not a bind address
        ("localhost.example.com", False),
        ("::", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """127.0.0.0/8, ::1 and localhost stay on this machine; nothing else does."""
    assert is_loopback_host(host) is loopback
