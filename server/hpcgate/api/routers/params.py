"""Query-parameter types shared by the routes.

pyfirecrest sends unset optional parameters as empty strings (``name=&account=``):
these types read a blank value as "not given".
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, StringConstraints


def _blank_as(default: object) -> BeforeValidator:
    def convert(value: object) -> object:
        return default if value == "" else value

    return BeforeValidator(convert)


BLANK_AS_NONE = _blank_as(None)

QueryBool = Annotated[bool, _blank_as(False)]
QueryInt = Annotated[int | None, BLANK_AS_NONE]
QueryText256 = Annotated[Annotated[str, StringConstraints(max_length=256)] | None, BLANK_AS_NONE]
"""An optional string of at most 256 characters; blank is unset."""
