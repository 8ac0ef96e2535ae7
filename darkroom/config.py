"""Settings for every Darkroom process, read from `DARKROOM_*` environment variables."""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from darkroom.keys import Keys

DEV_TOKEN = "darkroom-dev-token"  # noqa: S105 - documented development token, not a secret
DEV_OWNER = "dev"
# A token-table key may be the token's SHA-256 instead of the token: "sha256:<64 hex>".
TOKEN_DIGEST_PREFIX = "sha256:"  # noqa: S105 - a key format, not a secret
TOKEN_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _seconds(value: Any) -> Any:
    """Durations are written in seconds ("0.25", "30"); ISO 8601 ("PT30S") works too."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]


class OwnerPolicy(BaseModel):
    """How the scheduler and admission treat one owner (0 means no limit): its weight in
    the fair share of each model's queue, and its quotas."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Turns in each model's queue, relative to other owners: weight 2 starts twice as
    # many jobs as weight 1 while both have work waiting (kept to 0.1 %: see
    # `darkroom.scheduling.step`).
    weight: float = Field(default=1.0, ge=0.001, le=1_000)
    # Most jobs waiting to start, over every model; one more submit is refused.
    max_queued: int = Field(default=10_000, ge=0)
    # Most jobs running at once, over every model: the rest wait their turn (not refused).
    max_running: int = Field(default=0, ge=0)
    # Submits per second, sustained (a token bucket), and the burst above it (0: one
    # second's worth, at least 1).
    submit_rate: float = Field(default=0.0, ge=0)
    submit_burst: int = Field(default=0, ge=0)
    # Most WatchJob streams open at once, over every Events server.
    max_watches: int = Field(default=1_000, ge=0)

    @property
    def burst(self) -> int:
        """The token bucket's size."""
        return self.submit_burst or max(1, math.ceil(self.submit_rate))


class Settings(BaseSettings):
    """One settings object per process, built in `__main__` and passed down."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", extra="ignore", frozen=True)

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/darkroom"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # The longest any one database call may take: connecting, waiting for a pooled
    # connection, a statement (the server ends it too). Past it the call fails and its
    # connection is dropped, so a database out of reach answers UNAVAILABLE, not a hang.
    database_timeout: Seconds = timedelta(seconds=4)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key Darkroom writes starts with this (the queue name, event streams,
    # arq job ids), so several deployments or test runs can share one Redis.
    key_prefix: str = Field(default="darkroom", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    # Loopback by default: a deployment names the interfaces it serves on (and then
    # needs TLS or DARKROOM_ALLOW_INSECURE, and tokens of its own).
    jobs_address: str = "127.0.0.1:50051"
    events_address: str = "127.0.0.1:50052"
    # A plaintext port that answers grpc.health.v1 only, for Kubernetes' gRPC probes
    # (which cannot speak TLS); off when empty.
    jobs_health_address: str = ""
    events_health_address: str = ""
    shutdown_grace: Seconds = timedelta(seconds=10)

    # TLS for the Jobs and Events ports: PEM certificate chain and key; with a client CA,
    # callers must present a certificate it signed (mutual TLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Plaintext off loopback is refused unless this says something else encrypts it.
    allow_insecure: bool = False

    # Bearer token -> owner. A key may be the token's SHA-256 as "sha256:<64 hex>". The
    # default holds only the development token, which works only on loopback.
    auth_tokens: dict[str, str] = Field(default_factory=lambda: {DEV_TOKEN: DEV_OWNER})

    models: list[str] = Field(default_factory=lambda: ["tiny-sd"])
    default_model: str = ""
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 30
    default_guidance_scale: float = 7.5
    pixel_budget: int = Field(default=4_194_304, ge=64 * 64)
    max_attempts: int = Field(default=3, ge=1, le=20)
    queue_timeout: Seconds = timedelta(hours=1)
    # A request must not hang on a sick Redis: the Jobs service's Redis calls give up
    # after this (a submit's row is committed first, and the reconciler enqueues whatever
    # its announce gives up on).
    enqueue_timeout: Seconds = timedelta(seconds=1)

    # Where images go: a folder, file:///path, or gs://bucket[/prefix].
    storage_url: str = ".darkroom/storage"
    # A service-account key file for GCS; empty: application default credentials. URLs
    # are signed only when the credentials hold a private key.
    gcs_credentials_file: str = ""
    gcs_project: str = ""
    signed_url_ttl: Seconds = timedelta(hours=1)

    # Generator (one process per GPU, serving one model).
    generator_model: str = ""  # the model name it serves; default: the default model
    generator_model_path: str = ".darkroom/models/tiny-sd"  # a folder or a Hugging Face id
    generator_model_revision: str = ""  # a Hugging Face revision to pin
    generator_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    generator_dtype: str = Field(default="auto", pattern=r"^(auto|float32|float16|bfloat16)$")
    # host:port of the generator's HTTP health endpoint (/healthz, /readyz); "": none.
    generator_health_address: str = ""
    worker_id: str = ""  # default: hostname and pid
    # An idle worker blocks on its queue's wake-up list, which every enqueue pushes to, so
    # it starts a job as soon as it is queued; it also looks at the queue every poll delay
    # (arq's default), for messages that came without a wake-up. Without wake-ups it only
    # polls, as plain arq does (0.5 s then costs ~250 ms a pickup).
    worker_wakeups: bool = True
    worker_poll_delay: Seconds = timedelta(milliseconds=500)
    lease: Seconds = timedelta(seconds=15)
    heartbeat_interval: Seconds = timedelta(seconds=5)
    # Progress events per second, sustained (bursts of as many). Each one costs every hop
    # (an append, each watcher's read and write, each client's parse): at 10 a second they
    # were most of what a short job cost beside its pipeline.
    progress_rate: float = Field(default=4.0, gt=0)
    job_timeout: Seconds = timedelta(minutes=10)
    retry_backoff: Seconds = timedelta(seconds=2)
    retry_backoff_max: Seconds = timedelta(minutes=1)
    # Micro-batching, opt-in per model ('{"sd15": 4}'): a generator of a listed model runs
    # up to that many images of queued jobs that share size, steps and guidance as one
    # pipeline call, waiting at most `batch_wait` for them once it has one (see
    # `services/generator/batch.py`). Each job's images stay byte-identical to a run alone.
    batch_sizes: dict[str, Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=dict)
    batch_wait: Seconds = timedelta(milliseconds=5)

    # Reconciler: how often it runs, how long a QUEUED job may sit with its message taken
    # but unclaimed before the message is deemed lost, and how far back it checks that
    # finished jobs have their terminal event.
    reconcile_interval: Seconds = timedelta(seconds=5)
    reconcile_stale_message: Seconds = timedelta(seconds=15)
    reconcile_terminal_window: Seconds = timedelta(minutes=10)
    reconcile_batch: int = Field(default=500, ge=1, le=100_000)

    # Events service: how a watcher follows the job row when its event log is gone, and
    # how long a silent watch waits before it re-reads the row.
    watch_row_poll: Seconds = timedelta(seconds=1)
    watch_idle_check: Seconds = timedelta(seconds=30)
    # How often a queued job's watcher looks at its position (it is sent when it changed).
    watch_position_interval: Seconds = timedelta(seconds=1)

    # Scheduling and admission (see `darkroom.scheduling` and `darkroom.admission`): the
    # policy of every owner, then per-owner changes to it ('{"alice": {"weight": 2}}'),
    # a cap on each model's queue over all owners, and whether a submit for a model no
    # live worker serves is refused (off: with autoscaling to zero, work comes first).
    owner_policy: OwnerPolicy = Field(default_factory=OwnerPolicy)
    owner_policies: dict[str, OwnerPolicy] = Field(default_factory=dict)
    model_max_queued: int = Field(default=500_000, ge=0)
    refuse_unserved_models: bool = False

    log_level: str = "INFO"
    # None: JSON when stderr is not a terminal.
    log_json: bool | None = None

    # host:port of this process's Prometheus /metrics listener (plain HTTP: metrics hold
    # no credentials); "": no listener, and nothing is counted.
    metrics_address: str = ""
    # OpenTelemetry traces, exported over OTLP/gRPC to this collector (http://host:4317;
    # OTEL_EXPORTER_OTLP_* variables add headers or TLS); "": no traces, no cost.
    traces_endpoint: str = ""
    # The share of new traces recorded; a call in a caller's sampled trace always is, and
    # an attempt of a sampled submit too. Every trace (1.0) costs a submit a third more CPU.
    traces_sample_ratio: float = Field(default=0.1, ge=0, le=1)

    @field_validator("auth_tokens")
    @classmethod
    def _tokens_not_empty(cls, tokens: dict[str, str]) -> dict[str, str]:
        if any(not token or not owner for token, owner in tokens.items()):
            raise ValueError("every token and owner must be non-empty")
        for token in tokens:
            if token.startswith(TOKEN_DIGEST_PREFIX) and not TOKEN_DIGEST.fullmatch(token):
                raise ValueError(
                    "a key that starts with 'sha256:' must be 64 lowercase hex digits "
                    "(printf %s TOKEN | sha256sum)"
                )
        return tokens

    @field_validator("owner_policies", mode="before")
    @classmethod
    def _over_the_default(cls, policies: Any, info: ValidationInfo) -> Any:
        """Each owner's entry changes only the limits it names; the rest are the default's."""
        default = info.data.get("owner_policy")
        if not isinstance(policies, dict) or not isinstance(default, OwnerPolicy):
            return policies
        return {
            owner: {**default.model_dump(), **change} if isinstance(change, dict) else change
            for owner, change in policies.items()
        }

    @field_validator("database_timeout", "enqueue_timeout")
    @classmethod
    def _positive(cls, timeout: timedelta) -> timedelta:
        if timeout <= timedelta(0):
            raise ValueError("must be positive")
        return timeout

    @model_validator(mode="after")
    def _default_model_allowed(self) -> Settings:
        if not self.models:
            raise ValueError("DARKROOM_MODELS must name at least one model")
        for name in ("default_model", "generator_model"):
            value = getattr(self, name)
            if value and value not in self.models:
                raise ValueError(f"DARKROOM_{name.upper()} {value!r} is not in DARKROOM_MODELS")
        if self.heartbeat_interval >= self.lease:
            raise ValueError("DARKROOM_HEARTBEAT_INTERVAL must be shorter than DARKROOM_LEASE")
        return self

    @property
    def model_default(self) -> str:
        """The model a job gets when it names none."""
        return self.default_model or self.models[0]

    def retry_delay(self, attempt: int) -> timedelta:
        """Backoff before the attempt after `attempt`: doubling, capped."""
        delay: timedelta = self.retry_backoff * 2 ** max(attempt - 1, 0)
        return min(delay, self.retry_backoff_max)

    @property
    def request_bound(self) -> timedelta:
        """The longest a Jobs RPC takes, whatever the state of Postgres and Redis: a
        submit's admission (Redis), its row (the database), then its announce (Redis)."""
        return self.database_timeout + 2 * self.enqueue_timeout

    @property
    def served_model(self) -> str:
        """The model a generator process serves."""
        return self.generator_model or self.model_default

    @property
    def keys(self) -> Keys:
        """Every Redis key of this deployment."""
        return Keys(self.key_prefix)

    def policy_for(self, owner: str) -> OwnerPolicy:
        """The scheduling weight and quotas of `owner`."""
        return self.owner_policies.get(owner, self.owner_policy)

    @property
    def batch_size(self) -> int:
        """The most images this generator runs in one pipeline call (1: no batching)."""
        return self.batch_sizes.get(self.served_model, 1)

    def queue_for(self, model: str) -> str:
        """The arq queue (a Redis sorted set) of one model: workers serve one model each."""
        return Keys(self.key_prefix).queue(model)

    # HTTP gateway (browsers and HTTP callers): where it listens (loopback by default; off
    # loopback it needs TLS or DARKROOM_ALLOW_INSECURE, like the gRPC servers), the Jobs and
    # Events services it calls ("": their own address settings), the key that signs its
    # session cookies (required off loopback; "": a random one per process, so sessions end
    # when it restarts), how long a session lasts, the origins allowed by CORS (none: off),
    # whether cookies are marked Secure (None: when it serves TLS itself), and how often an
    # idle event stream sends a keepalive comment (under common proxies' 30-60 s timeouts).
    gateway_address: str = "127.0.0.1:8080"
    gateway_jobs_target: str = ""
    gateway_events_target: str = ""
    gateway_session_secret: str = Field(default="", repr=False)
    gateway_session_ttl: Seconds = timedelta(hours=12)
    gateway_cors_origins: list[str] = Field(default_factory=list)
    gateway_secure_cookies: bool | None = None
    gateway_keepalive: Seconds = timedelta(seconds=15)

    # Webhooks (see `darkroom.webhooks`): http:// URLs for loopback hosts (development),
    # the networks (CIDRs) deliveries may reach although private, loopback or link-local,
    # the delivery workers' timeout per POST, pause before each try (the first is the
    # move itself; after the last the delivery is dead), lease on a delivery in flight,
    # concurrent POSTs per worker and to one destination, polling interval, failures in a
    # row that open a destination's circuit and how long it then stays open, and how long
    # a rotated secret keeps signing beside the new one.
    webhook_allow_http: bool = False
    webhook_allow_networks: list[str] = Field(default_factory=list)
    webhook_timeout: Seconds = timedelta(seconds=15)
    webhook_retry_schedule: list[Seconds] = Field(
        default_factory=lambda: [
            timedelta(seconds=seconds) for seconds in (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
        ],
        min_length=1,
    )
    webhook_lease: Seconds = timedelta(seconds=60)
    webhook_concurrency: int = Field(default=32, ge=1, le=1_000)
    webhook_destination_concurrency: int = Field(default=8, ge=1, le=1_000)
    webhook_poll_interval: Seconds = timedelta(milliseconds=200)
    webhook_circuit_failures: int = Field(default=5, ge=1)
    webhook_circuit_cooldown: Seconds = timedelta(minutes=1)
    webhook_rotation_grace: Seconds = timedelta(hours=24)

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network such as 10.0.0.0/8") from exc
        return networks

    @model_validator(mode="after")
    def _lease_outlasts_a_post(self) -> Settings:
        if self.webhook_lease <= self.webhook_timeout:
            raise ValueError("DARKROOM_WEBHOOK_LEASE must be longer than DARKROOM_WEBHOOK_TIMEOUT")
        return self


def load_settings(program: str) -> Settings:
    """Settings from the environment; a bad one ends the process naming its variable."""
    lines = [f"{program}: invalid configuration"]
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            variable = f"DARKROOM_{name}" if name else "DARKROOM_*"
            lines.append(f"  {variable}: {error['msg']}")
    except SettingsError as exc:
        # Raised when a value is not even parseable (bad JSON for a list or table).
        match = re.search(r'field "(\w+)"', str(exc))
        variable = f"DARKROOM_{match.group(1).upper()}" if match else "DARKROOM_*"
        lines.append(f"  {variable}: cannot be parsed (lists and tables are JSON)")
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(2)
