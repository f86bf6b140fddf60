from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class VerificationSettings(ServiceSettings):
    """Settings of the verification service (env prefix ``SIPAS_VERIFICATION_``)."""

    service = "verification"
    model_config = SettingsConfigDict(env_prefix="SIPAS_VERIFICATION_", extra="ignore")
