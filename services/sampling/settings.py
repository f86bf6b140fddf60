from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SamplingSettings(ServiceSettings):
    """Settings of the sampling service (env prefix ``SIPAS_SAMPLING_``)."""

    service = "sampling"
    model_config = SettingsConfigDict(env_prefix="SIPAS_SAMPLING_", extra="ignore")
