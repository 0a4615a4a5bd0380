"""Query-parameter types shared by the routes.

pyfirecrest sends unset optional parameters as empty strings (``name=&account=``):
these types read a blank value as "not given".
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, StringConstraints


def _blank_as(default: object):
    def convert(value: object) -> object:
        return default if value == "" else value

    return BeforeValidator(convert)


QueryBool = Annotated[bool, _blank_as(False)]
QueryInt = Annotated[int | None, _blank_as(None)]


def optional_text(max_length: int) -> object:
    """An optional string of at most ``max_length`` characters."""
    return Annotated[
        Annotated[str, StringConstraints(max_length=max_length)] | None, _blank_as(None)
    ]
