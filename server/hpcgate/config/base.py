"""What every configuration model shares: forbidden extras, frozen values; the error."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
)


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class Model(BaseModel):
    """A configuration section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
