from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class PublicationSettings(ServiceSettings):
    """Settings of the publication service (env prefix ``SIPAS_PUBLICATION_``)."""

    service = "publication"
    model_config = SettingsConfigDict(env_prefix="SIPAS_PUBLICATION_", extra="ignore")
