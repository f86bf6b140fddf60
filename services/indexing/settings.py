from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IndexingSettings(ServiceSettings):
    """Settings of the indexing service (env prefix ``SIPAS_INDEXING_``)."""

    service = "indexing"
    model_config = SettingsConfigDict(env_prefix="SIPAS_INDEXING_", extra="ignore")
