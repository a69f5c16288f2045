"""Credentials: from the environment or a secrets directory, never from the command line.

Flags end up in shell history and in `ps`, so credentials have no flags. The first source
holding any value supplies all of them: OMS_CLEANUP_{AK,SK,SECURITY_TOKEN,AUTH_TOKEN}, then
the Huawei SDK's HUAWEICLOUD_SDK_{AK,SK,SECURITY_TOKEN}, then the files ak, sk,
security_token and auth_token of a secrets directory (a Kubernetes Secret volume).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from worker.oms.auth import AkSk, Credentials, IamToken
from worker.settings import (
    ENV_PREFIX,
    SDK_ENV_PREFIX,
    SECRET_FILE_NAMES,
    ConfigError,
    Problem,
    environment,
)

_SDK_CREDENTIAL_KEYS = ("ak", "sk", "security_token")
# The AK travels inside the Authorization header, where spaces and commas separate fields.
_ACCESS_KEY_RE = re.compile(r"[A-Za-z0-9]{1,128}")
# Secrets travel in headers (or key an HMAC); a stray newline would break the request.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class CredentialSettings(BaseSettings):
    """Credential values from one source; never read from the command line."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    ak: str | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None
    auth_token: SecretStr | None = None

    @field_validator("ak")
    @classmethod
    def _check_ak(cls, value: str | None) -> str | None:
        if value is not None and not _ACCESS_KEY_RE.fullmatch(value):
            raise ValueError("must be letters and digits only")
        return value

    @field_validator("sk", "security_token", "auth_token")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Secrets travel in headers (or key an HMAC); a stray newline would break the request.
        if value is not None and _CONTROL_RE.search(value.get_secret_value()):
            raise ValueError("contains control characters (a stray newline?)")
        return value


@dataclass(frozen=True, slots=True)
class _CredentialSource:
    description: str
    names: Mapping[str, str]  # field -> the name the user knows it by
    values: dict[str, str]


def load_credentials(
    *, environ: Mapping[str, str] | None = None, secrets_dir: Path | None = None
) -> Credentials:
    """The one credential set to sign with, from the first source that holds any.

    Sources, first wins: OMS_CLEANUP_{AK,SK,SECURITY_TOKEN,AUTH_TOKEN}; the Huawei SDK's
    HUAWEICLOUD_SDK_{AK,SK,SECURITY_TOKEN}; files ak, sk, security_token, auth_token in
    `secrets_dir`. Values are never mixed across sources (an AK from one place and an SK from
    another are a mismatched pair). Raises ConfigError when none, a partial set, or both modes
    are found.
    """
    env = environment(environ)
    sources = [
        _env_credentials(env, ENV_PREFIX, SECRET_FILE_NAMES, "environment (OMS_CLEANUP_*)"),
        _env_credentials(
            env, SDK_ENV_PREFIX, _SDK_CREDENTIAL_KEYS, "environment (HUAWEICLOUD_SDK_*)"
        ),
    ]
    if secrets_dir is not None:
        sources.append(_dir_credentials(secrets_dir))
    chosen = next((source for source in sources if source.values), None)
    if chosen is None:
        raise ConfigError(
            [
                Problem(
                    "credentials",
                    "none found: set OMS_CLEANUP_AK and OMS_CLEANUP_SK (and "
                    "OMS_CLEANUP_SECURITY_TOKEN for temporary keys), or OMS_CLEANUP_AUTH_TOKEN, "
                    "or give --secrets-dir "
                    "holding files ak and sk, or auth_token",
                )
            ]
        )
    try:
        values = CredentialSettings(
            _build_sources=((InitSettingsSource(CredentialSettings, chosen.values),), {})
        )
    except ValidationError as exc:
        raise ConfigError(
            [
                Problem(
                    chosen.names[str(error["loc"][0])],
                    str(error["msg"]).removeprefix("Value error, "),
                )
                for error in exc.errors()
            ]
        ) from None
    return _credentials_from(values, chosen)


def _env_credentials(
    env: Mapping[str, str], prefix: str, keys: Sequence[str], description: str
) -> _CredentialSource:
    names = {key: f"{prefix}{key.upper()}" for key in keys}
    values = {key: env[name].strip() for key, name in names.items() if env.get(name, "").strip()}
    return _CredentialSource(description, names, values)


def _dir_credentials(directory: Path) -> _CredentialSource:
    names = {key: f"{str(directory / key)!r}" for key in SECRET_FILE_NAMES}
    values: dict[str, str] = {}
    for key in SECRET_FILE_NAMES:
        path = directory / key
        if not path.exists():
            continue
        try:
            # Files in a Secret volume usually end with a newline the value does not include.
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                [Problem("--secrets-dir", f"cannot read {names[key]}: {reason}")]
            ) from None
        if text:
            values[key] = text
    return _CredentialSource(f"secrets directory {str(directory)!r}", names, values)


def _credentials_from(values: CredentialSettings, source: _CredentialSource) -> Credentials:
    key_mode = values.ak is not None or values.sk is not None or values.security_token is not None
    if key_mode and values.auth_token is not None:
        raise ConfigError(
            [
                Problem(
                    source.names["auth_token"],
                    "give either an AK/SK pair or an auth token, not both "
                    f"(in {source.description})",
                )
            ]
        )
    if values.auth_token is not None:
        return IamToken(token=values.auth_token)
    missing = [key for key in ("ak", "sk") if getattr(values, key) is None]
    if missing:
        given = ", ".join(
            source.names[key] for key in ("ak", "sk", "security_token") if key in source.values
        )
        raise ConfigError(
            [
                Problem(
                    source.names[key],
                    f"missing: {given} {'is' if ',' not in given else 'are'} set in "
                    f"{source.description}, so this is needed too",
                )
                for key in missing
            ]
        )
    assert values.ak is not None
    assert values.sk is not None
    return AkSk(access_key=values.ak, secret_key=values.sk, security_token=values.security_token)
