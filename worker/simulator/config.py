"""What a simulator hosts and how it behaves: projects, population, timing, credentials, faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from pydantic import SecretStr

from worker.oms.auth import AkSk
from worker.simulator.faults import FaultConfig
from worker.simulator.population import PopulationConfig

# The reference's golden-vector identities: fixed test values, never real secrets.
DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_ACCESS_KEY = "AKTESTAKTESTAKTEST01"
DEFAULT_SECRET_KEY = "SKtestSKtestSKtestSKtestSKtestSKtest0001"  # noqa: S105
DEFAULT_IAM_TOKEN = "MIIsimulatorIAMtoken-0001"  # noqa: S105
# The same default key as the worker's credentials: for the demo, tests and benchmarks.
DEFAULT_CLIENT_CREDENTIALS = AkSk(
    access_key=DEFAULT_ACCESS_KEY, secret_key=SecretStr(DEFAULT_SECRET_KEY)
)


@dataclass(frozen=True, slots=True)
class SimAccessKey:
    """An access key the simulator accepts; temporary when `security_token` is set."""

    access_key: str
    secret_key: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SimCredentials:
    """Every credential the simulator accepts."""

    access_keys: tuple[SimAccessKey, ...] = (
        SimAccessKey(access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY),
    )
    iam_token: str | None = field(default=DEFAULT_IAM_TOKEN, repr=False)

    def key(self, access_key: str) -> SimAccessKey | None:
        """The configured key with this AK, if any."""
        for candidate in self.access_keys:
            if candidate.access_key == access_key:
                return candidate
        return None


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """How tasks move on by themselves, measured on the injected clock."""

    # A migrating task finishes this long after the simulator starts (uniform in the range).
    finish_after: tuple[timedelta, timedelta] = (timedelta(minutes=1), timedelta(minutes=15))
    # Share of finishing migrations that fail instead of succeeding.
    failed_share: float = 0.15
    # pausing (7) -> paused (3), after a stop or for tasks already pausing at start.
    pausing_delay: timedelta = timedelta(seconds=2)
    # Real OMS keeps answering OMS.0063 for a short while after a stopped task reaches 3.
    sticky_pause_share: float = 0.25
    sticky_pause_attempts: int = 2


@dataclass(frozen=True, slots=True)
class ChangeConfig:
    """Tasks a person changes after a client listed them; the defaults change nothing.

    Which tasks is drawn (seeded) when the simulator starts, among its finished ones.
    """

    # Failed tasks a person retries just before a client's first delete reaches them: that
    # delete meets OMS.0063 (migrating), and the migration succeeds `retry_runs` later.
    retried: int = 0
    retry_runs: timedelta = timedelta(seconds=2)
    # Renamed (`rename_suffix` appended) and restarted (start_time set to the moment of the
    # change) tasks change `after` the first list request, on the injected clock.
    renamed: int = 0
    rename_suffix: str = "-keep"
    restarted: int = 0
    after: timedelta = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything a simulator instance needs; frozen so a running instance cannot drift."""

    project_ids: tuple[str, ...] = (DEFAULT_PROJECT_ID,)
    tasks_per_project: int = 200
    seed: int = 20261127
    population: PopulationConfig = field(default_factory=PopulationConfig)
    timing: TimingConfig = TimingConfig()
    credentials: SimCredentials = SimCredentials()
    faults: FaultConfig = field(default_factory=FaultConfig)
    changes: ChangeConfig = ChangeConfig()
    # The gateway rejects an `X-Sdk-Date` this far from its clock (the real value is unpublished).
    date_tolerance: timedelta = timedelta(minutes=15)
    # The docs disagree on the offset cap (2147483647 on most pages, 10000 on one).
    max_offset: int = 2_147_483_647
