"""The lean submission path parses a body only where FastAPI would parse it alike.

``hotpath._parsed`` (the route's model, ``model_validate_json``) must accept a body
only if FastAPI's way (``json.loads`` of the bytes, then the model's validation)
accepts it and gives the same job; every other body goes to FastAPI, whose answer
then is its own (tests/filesystem/test_hotpath.py compares the answers on the site).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from hpcgate.api import hotpath
from hpcgate.api.app import create_app
from hpcgate.compute.scheduler.models import JobSubmitRequest
from hpcgate.config import Settings

_JOB = b'{"job":{"workingDirectory":"/tmp",%s}}'
_BODIES = [
    _JOB % b'"script":"#!/bin/bash\\ntrue\\n"',
    _JOB % b'"script":"a","script":"b"',  # a repeated key: the last, as json.loads
    _JOB % b'"script":"\\ud800x"',  # a lone surrogate
    _JOB % b'"script":"a\x01b"',  # a raw control character
    b"\xef\xbb\xbf" + _JOB % b'"script":"x"',  # a UTF-8 byte order mark
    (_JOB % b'"script":"x"').decode().encode("utf-16"),
    _JOB % b'"script":"x","tasks":1.0',
    _JOB % b'"script":"x","tasks":"2"',
    _JOB % b'"script":"x","tasks":1e400',
    _JOB % b'"script":"x","tasks":NaN',
    _JOB % (b'"script":"x","tasks":' + b"1" * 5000),  # over int's digit limit
    _JOB % b'"script":"x","tasks":true',
    _JOB % b'"script":"x","env":{"A":"1","A":"2"}',
    _JOB % b'"script":"x","time_limit":5,"working_directory":"/x"',
    _JOB % b'"script":"x","extraOptions":{"mail-type":null}',
    _JOB % b'"script":"x"' + b" x",
    _JOB % b'"script":"x\xff"',
    _JOB % b'"script":"x\xed\xa0\x80"',  # a surrogate in UTF-8
    _JOB % b'"script":"x","unknown":1',
    _JOB % b'"script":"x","array":"0-9%2","dependencies":["afterok:1"]',
    b"[]",
    b"null",
    b"",
]


def _as_fastapi(raw: bytes) -> JobSubmitRequest | None:
    try:
        value = json.loads(raw)
        return TypeAdapter(JobSubmitRequest).validate_python(value, from_attributes=True)
    except (ValueError, ValidationError):
        return None


@pytest.mark.parametrize("raw", _BODIES)
def test_parsed_only_as_fastapi(raw: bytes) -> None:
    lean = hotpath._parsed(raw)
    if lean is not None:
        full = _as_fastapi(raw)
        assert full is not None and lean.model_dump() == full.model_dump()


def test_plain_bodies_are_parsed() -> None:
    assert hotpath._parsed(_BODIES[0]) is not None


def test_plain_submission_headers() -> None:
    json_type = (b"content-type", b"application/json")
    assert hotpath._plain_submission([json_type]) == (True, None)
    assert hotpath._plain_submission([json_type, (b"idempotency-key", b"k1")]) == (True, "k1")
    for headers in (
        [],
        [(b"content-type", b"application/json; charset=utf-8")],
        [json_type, json_type],
        [json_type, (b"idempotency-key", b"a"), (b"idempotency-key", b"b")],
        [json_type, (b"idempotency-key", b"")],
        [json_type, (b"idempotency-key", "é".encode())],
    ):
        assert hotpath._plain_submission(headers)[0] is False, headers


def test_submit_route_is_recognised(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "auth": {"issuer": "https://idp.example", "audience": "hpc", "jwks_url": "https://i/j"},
            "systems": [
                {
                    "name": "cluster",
                    "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
                    "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
                }
            ],
            "state_dir": tmp_path,
        }
    )
    route = hotpath._submit_route(create_app(settings))
    assert route is not None and route.path == "/compute/{system_name}/jobs"
