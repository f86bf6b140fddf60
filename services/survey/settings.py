from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SurveySettings(ServiceSettings):
    """Settings of the survey service (env prefix ``SIPAS_SURVEY_``)."""

    service = "survey"
    model_config = SettingsConfigDict(env_prefix="SIPAS_SURVEY_", extra="ignore")
