"""Base model for FirecREST v2 wire shapes: camelCase out, camelCase or snake_case in."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A JSON body of the API: camelCase out, camelCase or snake_case in."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


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
