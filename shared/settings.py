"""Settings: one class per service, each with its own environment prefix.

Defaults are the embedded mode (SQLite files under ``data/``, in-process bus), so a fresh clone
runs with no configuration. Production differs only by environment variables: point
``SIPAS_DATABASE_URL`` at PostgreSQL and ``SIPAS_BUS_URL`` at RabbitMQ. A service may override
either with its own prefix (``SIPAS_SAMPLING_DATABASE_URL``) when it lives on another server.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("sampling", "survey", "verification", "indexing", "publication")
DEFAULT_PORTS = {"sampling": 8001, "survey": 8002, "verification": 8003, "indexing": 8004, "publication": 8005}


class PlatformSettings(BaseSettings):
    """What all five services share: where data lives, which bus, which environment."""

    model_config = SettingsConfigDict(env_prefix="SIPAS_", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    data_dir: Path = Path("data")
    # None means embedded: one SQLite file per service under data_dir.
    database_url: str | None = None
    # memory:// is the in-process bus; amqp://user:pass@host:port/vhost is RabbitMQ.
    bus_url: str = "memory://"
    # Names on the broker; tests set their own so parallel runs never see each other's events.
    exchange: str = "sipas.events"
    queue_prefix: str = "sipas"
    # Prefix of each service's PostgreSQL schema (tests give every test its own schemas).
    schema_prefix: str = ""
    log_level: str = "INFO"
    # JSON lines for machines; None = JSON except in the local environment (a person at a terminal).
    log_json: bool | None = None
    # Applying migrations at start-up suits embedded mode; production runs `migrate` first.
    migrate_on_start: bool | None = None
    outbox_poll_seconds: float = 0.5
    # Published outbox rows older than this are deleted by the relay (0 keeps them forever).
    outbox_retention_days: float = 7.0
    # `python -m services stack` only: seconds its five services get to stop after SIGTERM
    # before it kills them (none may outlive it).
    stack_stop_seconds: float = 30.0
    consumer_prefetch: int = 32
    consumer_max_attempts: int = 5
    consumer_retry_base_seconds: float = 0.2
    # Where each service can be reached over HTTP (for httpx calls between services).
    sampling_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['sampling']}"
    survey_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['survey']}"
    verification_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['verification']}"
    indexing_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['indexing']}"
    publication_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['publication']}"
    # Shared secret the services send each other (X-Internal-Token) for calls made on their own
    # behalf (e.g. publication fetching a run's results). Unset: a random one per process, which
    # is right for the embedded mode (all five share the process); production must set it.
    internal_token: str = Field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def url_of(self, service: str) -> str:
        return getattr(self, f"{service}_url")

    @model_validator(mode="after")
    def _production_needs_a_token(self) -> "PlatformSettings":
        # Separate processes must share one token; a random one per process would make every
        # internal call fail with 401, so production refuses to start without it.
        if self.environment == "production" and "internal_token" not in self.model_fields_set:
            raise ValueError("SIPAS_INTERNAL_TOKEN must be set in production")
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url is None and self.bus_url.startswith("memory")


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses set ``service`` and the env prefix."""

    service: ClassVar[str]
    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0
    # Own override of the platform database URL (e.g. a service on its own PostgreSQL server).
    database_url: str | None = None
    # PostgreSQL schema holding this service's tables; SQLite uses one file per service instead.
    db_schema: str = ""
    platform: PlatformSettings = Field(default_factory=PlatformSettings)

    @model_validator(mode="after")
    def _defaults(self) -> "ServiceSettings":
        if not self.port:
            self.port = DEFAULT_PORTS[self.service]
        if not self.db_schema:
            self.db_schema = self.platform.schema_prefix + self.service
        return self

    @property
    def effective_database_url(self) -> str:
        url = self.database_url or self.platform.database_url
        if url:
            return url
        return f"sqlite+aiosqlite:///{self.platform.data_dir / (self.service + '.db')}"

    @property
    def migrate_on_start(self) -> bool:
        if self.platform.migrate_on_start is not None:
            return self.platform.migrate_on_start
        return not self.effective_database_url.startswith("postgresql")
