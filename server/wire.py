"""Base model for FirecREST v2 wire shapes: camelCase out, camelCase or snake_case in."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A JSON body of the API. Serialise with ``by_alias=True`` (FastAPI does)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ErrorField(WireModel):
    location: str
    name: str
    message: str


class ErrorData(WireModel):
    fields: list[ErrorField]


class ErrorBody(WireModel):
    """FirecREST's error body."""

    error_type: Literal["error", "validation"] = "error"
    message: str
    caused_by: list[str] | None = None
    data: ErrorData | dict[str, Any] | None = None
    user: str | None = None
