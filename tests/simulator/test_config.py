"""SimulatorConfig: secrets stay out of reprs; credential lookup by access key."""

from __future__ import annotations

from worker.simulator.config import SimAccessKey, SimCredentials, SimulatorConfig


def test_reprs_hide_every_secret() -> None:
    """SK, security token and IAM token never show in a config's repr."""
    credentials = SimCredentials(
        access_keys=(SimAccessKey("AKVISIBLE", "sk-hidden-value", "st-hidden-value"),),
        iam_token="iam-hidden-value",
    )
    text = repr(SimulatorConfig(credentials=credentials))
    assert "AKVISIBLE" in text
    for secret in ("sk-hidden-value", "st-hidden-value", "iam-hidden-value"):
        assert secret not in text


def test_key_lookup_by_access_key() -> None:
    """key() finds the configured key by AK and None for others."""
    first, second = SimAccessKey("AK1", "SK1"), SimAccessKey("AK2", "SK2", "ST2")
    credentials = SimCredentials(access_keys=(first, second))
    assert credentials.key("AK2") is second
    assert credentials.key("AK3") is None
