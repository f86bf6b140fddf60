from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class PublicationSettings(ServiceSettings):
    """Settings of the publication service (env prefix ``SIPAS_PUBLICATION_``).

    Plain fields like every other setting of the platform, one environment variable each
    (``SIPAS_PUBLICATION_ANONYMOUS_RATE_PER_MINUTE=1200``), so they are listed, checked and
    overridden the same way; every one has a production-ready default."""

    service = "publication"
    model_config = SettingsConfigDict(env_prefix="SIPAS_PUBLICATION_", extra="ignore")

    # How often the background task looks for releases whose embargo passed and for due webhook
    # deliveries. Visibility itself never waits for it: publish_at is compared with now on reads.
    scheduler_poll_seconds: float = Field(1.0, gt=0)
    # Webhooks: attempts per delivery, backoff (attempt k waits base * 2**(k-1)), timeout, and
    # how many consecutive failed attempts disable a subscription.
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_retry_base_seconds: float = Field(5.0, ge=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_disable_after: int = Field(15, ge=1)
    # Anonymous traffic on the public API: a token bucket per client address.
    anonymous_rate_per_minute: int = Field(600, ge=1)
    anonymous_burst: int = Field(60, ge=1)
    # Largest request body accepted (the public API takes none; webhook bodies are small).
    max_request_bytes: int = Field(16384, ge=256)
    # Cache-Control max-age of public answers that may change (the latest release); answers
    # pinned to a version or a past instant are immutable.
    public_max_age_seconds: int = Field(30, ge=0)
