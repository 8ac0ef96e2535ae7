"""Settings for every Darkroom process, read from `DARKROOM_*` environment variables."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

DEV_TOKEN = "darkroom-dev-token"  # noqa: S105 - documented development token, not a secret
DEV_OWNER = "dev"


class Settings(BaseSettings):
    """One settings object per process, built in `__main__` and passed down."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", extra="ignore", frozen=True)

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/darkroom"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key Darkroom writes starts with this (the queue name, event streams,
    # arq job ids), so several deployments or test runs can share one Redis.
    key_prefix: str = Field(default="darkroom", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    jobs_address: str = "[::]:50051"
    events_address: str = "[::]:50052"
    shutdown_grace: timedelta = timedelta(seconds=10)

    # Bearer token -> owner. The default holds only the development token: set your own
    # table (JSON) in production.
    auth_tokens: dict[str, str] = Field(default_factory=lambda: {DEV_TOKEN: DEV_OWNER})

    models: list[str] = Field(default_factory=lambda: ["tiny-sd"])
    default_model: str = ""
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 30
    default_guidance_scale: float = 7.5
    pixel_budget: int = Field(default=4_194_304, ge=64 * 64)
    max_attempts: int = Field(default=3, ge=1, le=20)
    queue_timeout: timedelta = timedelta(hours=1)
    # A submit must not hang on a sick Redis: the row is committed first and the
    # reconciler enqueues whatever this gives up on.
    enqueue_timeout: timedelta = timedelta(seconds=1)

    log_level: str = "INFO"
    # None: JSON when stderr is not a terminal.
    log_json: bool | None = None

    @field_validator("auth_tokens")
    @classmethod
    def _tokens_not_empty(cls, tokens: dict[str, str]) -> dict[str, str]:
        if any(not token or not owner for token, owner in tokens.items()):
            raise ValueError("every token and owner must be non-empty")
        return tokens

    @model_validator(mode="after")
    def _default_model_allowed(self) -> Settings:
        if not self.models:
            raise ValueError("DARKROOM_MODELS must name at least one model")
        if self.default_model and self.default_model not in self.models:
            raise ValueError(
                f"DARKROOM_DEFAULT_MODEL {self.default_model!r} is not in DARKROOM_MODELS"
            )
        return self

    @property
    def model_default(self) -> str:
        """The model a job gets when it names none."""
        return self.default_model or self.models[0]

    @property
    def queue_name(self) -> str:
        """The arq queue (a Redis sorted set) generators take work from."""
        return f"{self.key_prefix}:queue"


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
