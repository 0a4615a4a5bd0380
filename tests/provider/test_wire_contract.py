"""One wire contract: the provider's models checked against the server's OpenAPI document.

The provider (``airflow_provider_hpc.hooks``) and the server (``hpcgate``) each declare the
FirecREST v2 wire shapes in pydantic. This test makes the server's document the single
source: for every call of ``hooks/api.py`` it finds the operation the server serves at that
method and path, and checks field by field (camelCase names, JSON types, required-ness,
null) that

* every field the provider reads is one the server sends, required where the provider
  requires it, never null where the provider cannot take null, of a type it accepts;
* every query parameter, header and body field the provider sends is one the server
  declares, every field the server requires is sent, of a type the server accepts.

The provider's unit tests run through the real server application (``realapi.py``); the
one fake left, ``tests/provider/fakeapi.py`` (the job-event stream, for the hub's tests),
builds its answers from the server's own models, and its routes and answers are checked
here against the server's, so it cannot drift either.
No site is needed: the app is created (never started) from a minimal configuration.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel

from airflow_provider_hpc.hooks import api, models
from hpcgate.api.app import create_app
from hpcgate.compute.scheduler.models import Job as ServerJob
from hpcgate.config import Settings
from hpcgate.wire import ErrorBody
from tests.provider.fakeapi import BASE_URL, SYSTEM, FakeHpcApi

Schema = dict[str, Any]

# ---------------------------------------------------------------------- schema comparison


@dataclass(frozen=True)
class Side:
    """A JSON schema together with the document its ``$ref``s point into."""

    schema: Schema
    root: Schema

    def resolve(self) -> Schema:
        schema = self.schema
        while "$ref" in schema:
            node: Any = self.root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def at(self, schema: Schema) -> Side:
        return Side(schema, self.root)

    def branches(self) -> list[Side]:
        """The non-null alternatives (``anyOf``/``oneOf`` flattened, refs resolved)."""
        schema = self.resolve()
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            return [b for alt in alternatives for b in self.at(alt).branches()]
        if schema.get("type") == "null":
            return []
        return [self.at(schema)]

    def nullable(self) -> bool:
        schema = self.resolve()
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            return any(self.at(alt).nullable() for alt in alternatives)
        return schema.get("type") == "null" or self.kind() == "any"  # {} takes anything

    def kind(self) -> str:
        schema = self.resolve()
        if "properties" in schema or schema.get("type") == "object":
            return "object"
        return str(schema.get("type", "any"))


def _accepts(consumer: str, producer: str) -> bool:
    return consumer in (producer, "any") or (consumer, producer) == ("number", "integer")


def compare(
    producer: Side,
    consumer: Side,
    where: str,
    *,
    provider_reads: bool,
    producer_sends_null: bool = True,
) -> list[str]:
    """Problems with ``producer``'s JSON being read by ``consumer`` (empty: compatible).

    ``provider_reads``: the consumer is the provider (a response), so the fields to check
    are the consumer's; else (a request) the producer's. Either way the other side is the
    server, and a field the provider names must exist there.
    """
    problems: list[str] = []
    if producer_sends_null and producer.nullable() and not consumer.nullable():
        problems.append(f"{where}: the sender may send null, the reader cannot take it")
    for sent in producer.branches():
        kind = sent.kind()
        match = next((b for b in consumer.branches() if _accepts(b.kind(), kind)), None)
        if match is None:
            taken = sorted({b.kind() for b in consumer.branches()}) or ["null"]
            problems.append(f"{where}: {kind} sent, the reader takes {'/'.join(taken)}")
            continue
        sent_enum, taken_enum = sent.resolve().get("enum"), match.resolve().get("enum")
        if taken_enum is not None and not set(sent_enum or [None]) <= set(taken_enum):
            problems.append(f"{where}: values {sent_enum} sent, the reader takes {taken_enum}")
        if kind == "object" and match.kind() == "object":
            problems += _compare_objects(sent, match, where, provider_reads, producer_sends_null)
        elif kind == "array" and match.kind() == "array":
            items = sent.at(sent.resolve().get("items", {}))
            problems += compare(
                items,
                match.at(match.resolve().get("items", {})),
                f"{where}[]",
                provider_reads=provider_reads,
                producer_sends_null=producer_sends_null,
            )
    return problems


def _compare_objects(
    producer: Side, consumer: Side, where: str, provider_reads: bool, sends_null: bool
) -> list[str]:
    sent, taken = producer.resolve(), consumer.resolve()
    sent_props, taken_props = sent.get("properties", {}), taken.get("properties", {})
    problems = [
        f"{where}.{name}: required by the reader, not always sent"
        for name in taken.get("required", [])
        if name not in sent.get("required", [])
    ]
    if not sent_props and not taken_props:  # maps: compare the values
        value = sent.get("additionalProperties")
        if isinstance(value, dict) and isinstance(taken.get("additionalProperties"), dict):
            problems += compare(
                producer.at(value),
                consumer.at(taken["additionalProperties"]),
                f"{where}{{}}",
                provider_reads=provider_reads,
                producer_sends_null=sends_null,
            )
        return problems
    provider_props = taken_props if provider_reads else sent_props
    server_props = sent_props if provider_reads else taken_props
    for name in provider_props:
        if name not in server_props:
            verb = "reads" if provider_reads else "sends"
            problems.append(f"{where}.{name}: the provider {verb} a field the server does not know")
            continue
        problems += compare(
            producer.at(sent_props[name]),
            consumer.at(taken_props[name]),
            f"{where}.{name}",
            provider_reads=provider_reads,
            producer_sends_null=sends_null,
        )
    return problems


def model_side(model: type[BaseModel], mode: str = "validation") -> Side:
    schema = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[arg-type]
    return Side(schema, schema)


def sample_side(value: Any) -> Side:
    """The schema of one JSON value, every key required (the provider sends them all)."""

    def infer(item: Any) -> Schema:
        if isinstance(item, dict):
            props = {key: infer(sub) for key, sub in item.items()}
            return {"type": "object", "properties": props, "required": list(props)}
        if isinstance(item, list):
            return {"type": "array", "items": infer(item[0]) if item else {}}
        names = {bool: "boolean", int: "integer", float: "number", str: "string"}
        return {"type": names.get(type(item), "null")}

    schema = infer(value)
    return Side(schema, schema)


# ---------------------------------------------------------------------- the provider's calls

JOB = "123"
PATH = "/scratch/hpcuser/file.txt"


@dataclass(frozen=True)
class Contract:
    """One provider call and the model it reads the answer with (None: no JSON read)."""

    call: api.ApiCall[Any]
    reads: type[BaseModel] | None
    sends: type[BaseModel] | None = None  # the model of the JSON body, when it has one
    status: str | None = None  # the success status read, when the operation has several


SPEC = models.JobSpec(working_directory="/scratch/hpcuser", script="#!/bin/bash\ntrue\n")

CONTRACTS: dict[str, Contract] = {
    "systems": Contract(api.systems(), models.SystemsResponse),
    "submit_job": Contract(
        api.submit_job(SYSTEM, SPEC, "key-1"), models.JobSubmitted, models.JobSpec, "201"
    ),
    "preflight_job": Contract(
        api.preflight_job(SYSTEM, SPEC), models.PreflightResult, models.JobSpec, "200"
    ),
    "job_accounting": Contract(api.job_accounting(SYSTEM, JOB), models.JobAccountingResponse),
    "job_page_link": Contract(api.job_page_link(SYSTEM, JOB), models.JobPageLink),
    "get_job": Contract(api.get_job(SYSTEM, JOB), models.JobsResponse),
    "list_jobs": Contract(
        api.list_jobs(SYSTEM, name="n", allusers=True, time_window="1h"), models.JobsResponse
    ),
    "cancel_job": Contract(api.cancel_job(SYSTEM, JOB), None),
    "job_metadata": Contract(api.job_metadata(SYSTEM, JOB), models.JobMetadataResponse),
    "tail": Contract(api.tail(SYSTEM, PATH, lines=5, nbytes=100), models.FileContentResponse),
    "view": Contract(api.view(SYSTEM, PATH, offset=0, size=10), models.TextResponse),
    "stat": Contract(api.stat(SYSTEM, PATH, dereference=True), models.FileStatResponse),
    "checksum": Contract(api.checksum(SYSTEM, PATH), models.FileChecksumResponse),
    "ls": Contract(api.ls(SYSTEM, "/scratch", show_hidden=True), models.FileListResponse),
    "mkdir": Contract(api.mkdir(SYSTEM, "/scratch/d", parents=True), None),
    "rm": Contract(api.rm(SYSTEM, PATH), None),
    "symlink": Contract(api.symlink(SYSTEM, PATH, "/scratch/link"), None),
    "transfer": Contract(api.transfer(SYSTEM, "mv", PATH, "/scratch/b"), models.TransferResponse),
    "transfer_cp": Contract(
        api.transfer(SYSTEM, "cp", PATH, "/scratch/b"), models.TransferResponse
    ),
    "download": Contract(api.download(SYSTEM, PATH), None),
    "upload": Contract(api.upload(SYSTEM, "/scratch"), None),
}


def _api_calls() -> set[str]:
    """Every public function of ``hooks/api.py`` that describes a call."""
    return {
        name
        for name, function in inspect.getmembers(api, inspect.isfunction)
        if function.__module__ == api.__name__
        and not name.startswith("_")
        and str(inspect.signature(function).return_annotation).startswith("ApiCall")
    }


# ---------------------------------------------------------------------- the server's document


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    settings = Settings.model_validate(
        dict(
            auth={
                "issuer": "https://idp.example",
                "audience": "hpc",
                "jwks_url": "https://idp/jwks",
            },
            systems=[
                {
                    "name": SYSTEM,
                    "ssh": {"host": "login", "known_hosts": "/etc/ssh/known_hosts"},
                    "credentials": {"kind": "ca", "ca_key": "/etc/hpcgate/ca"},
                }
            ],
            state_dir=Path(tmp_path_factory.mktemp("contract-state")),
        )
    )
    return create_app(settings).openapi()


def operation(doc: Schema, method: str, path: str) -> Schema:
    """The operation serving ``method path`` (literal segments win over parameters)."""
    found = []
    for template, item in doc["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            found.append((template.count("{"), template, item[method.lower()]))
    assert found, f"the server serves no {method} {path}"
    op: Schema = min(found, key=lambda entry: entry[0])[2]
    return op


def _json_schema(content: Schema, media: str = "application/json") -> Schema | None:
    schema: Schema | None = content.get("content", {}).get(media, {}).get("schema")
    return schema


def contract_problems(doc: Schema, contract: Contract) -> Iterator[str]:
    call = contract.call
    where = f"{call.method} {call.path}"
    op = operation(doc, call.method, call.path)
    declared = {(p["in"], p["name"].lower()) for p in op.get("parameters", [])}
    for name in call.params or {}:
        if ("query", name.lower()) not in declared:
            yield f"{where}: query parameter {name!r} is not one the server declares"
    for name in call.headers:
        if ("header", name.lower()) not in declared:
            yield f"{where}: header {name!r} is not one the server declares"
    if call.json is not None:
        body = _json_schema(op.get("requestBody", {}))
        if body is None:
            yield f"{where}: a JSON body is sent, the server takes none"
        else:
            server = Side(body, doc)
            try:
                jsonschema.validate(call.json, {**body, "components": doc["components"]})
            except jsonschema.ValidationError as error:
                yield f"{where}: the server's schema refuses the body: {error.message}"
            sent = sample_side(call.json)
            if contract.sends is not None:  # every field the model may send, not one sample
                model = model_side(contract.sends, "serialization")
                (key,) = call.json
                sent = Side({**sent.schema, "properties": {key: model.schema}}, model.root)
            yield from compare(
                sent, server, f"{where} body", provider_reads=False, producer_sends_null=False
            )
    if contract.reads is not None:
        answers = [
            _json_schema(answer)
            for code, answer in sorted(op["responses"].items())
            if (code == contract.status if contract.status else code.startswith("2"))
        ]
        schema = next((answer for answer in answers if answer is not None), None)
        if schema is None:
            yield f"{where}: the provider reads JSON, the server declares none"
        else:
            yield from compare(
                Side(schema, doc), model_side(contract.reads), where, provider_reads=True
            )


# ---------------------------------------------------------------------- tests


def test_every_provider_call_has_a_contract() -> None:
    names = {name.removesuffix("_cp") for name in CONTRACTS}
    assert names == _api_calls(), "add the new call of hooks/api.py to CONTRACTS"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_provider_call_matches_the_server(openapi: Schema, name: str) -> None:
    assert list(contract_problems(openapi, CONTRACTS[name])) == []


def test_upload_field_is_the_servers(openapi: Schema) -> None:
    call = api.upload(SYSTEM, "/scratch")
    body = _json_schema(
        operation(openapi, call.method, call.path)["requestBody"], "multipart/form-data"
    )
    assert body is not None and body["required"] == ["file"]  # the hook sends field "file"


def test_event_data_is_the_servers_job() -> None:
    """SSE ``data`` is the server's Job JSON; the provider reads it as ``models.Job``."""
    server = model_side(ServerJob, "serialization")
    assert compare(server, model_side(models.Job), "event data", provider_reads=True) == []


def test_error_body_is_the_servers() -> None:
    server = model_side(ErrorBody, "serialization")
    assert compare(server, model_side(models.ApiErrorBody), "error", provider_reads=True) == []


# -- the check itself fails on drift ------------------------------------------------------


def _renamed(doc: Schema, model: str, old: str, new: str) -> Schema:
    drifted = copy.deepcopy(doc)
    schema = drifted["components"]["schemas"][model]
    schema["properties"][new] = schema["properties"].pop(old)
    schema["required"] = [new if name == old else name for name in schema.get("required", [])]
    return drifted


@pytest.mark.parametrize(
    ("model", "old", "new", "call"),
    [
        ("Job", "jobId", "id", "get_job"),
        ("JobStatus", "state", "jobState", "list_jobs"),
        ("FileChecksum", "checksum", "digest", "checksum"),
        ("JobDescription", "workingDirectory", "workDir", "submit_job"),
        ("TransferJob", "jobId", "id", "transfer"),
    ],
)
def test_a_renamed_server_field_fails(
    openapi: Schema, model: str, old: str, new: str, call: str
) -> None:
    problems = list(contract_problems(_renamed(openapi, model, old, new), CONTRACTS[call]))
    assert any(old in problem or new in problem for problem in problems), problems


def test_a_field_the_server_does_not_send_fails(openapi: Schema) -> None:
    class Drifted(models.JobStatus):
        exit_reason: str | None = None  # the server has no exitReason

    class DriftedJob(models.Job):
        status: Drifted = Drifted()

    class DriftedResponse(models.JobsResponse):
        jobs: list[DriftedJob] | None = None  # type: ignore[assignment]

    contract = Contract(CONTRACTS["get_job"].call, DriftedResponse)
    problems = list(contract_problems(openapi, contract))
    assert problems == [
        f"GET /compute/{SYSTEM}/jobs/{JOB}.jobs[].status.exitReason: "
        "the provider reads a field the server does not know"
    ]


def test_a_required_field_the_server_may_omit_fails(openapi: Schema) -> None:
    class Strict(models.FileStat):
        size: int
        uid: int  # required here; the server always sends it, so still fine

    class StrictResponse(models.FileStatResponse):
        output: Strict | None = None

    drifted = copy.deepcopy(openapi)
    drifted["components"]["schemas"]["FileStat"]["required"].remove("uid")
    contract = Contract(CONTRACTS["stat"].call, StrictResponse)
    assert list(contract_problems(openapi, contract)) == []
    assert any("uid" in problem for problem in contract_problems(drifted, contract))


# -- the fake serves only what the server serves ----------------------------------------------


def _example(pattern: str) -> str:
    return re.sub(r"\(\[\^/\]\+\)", "x", pattern).replace("(mv|cp)", "mv")


def test_the_fakes_routes_are_the_servers(openapi: Schema) -> None:
    for pattern, (method, _) in FakeHpcApi()._routes():
        operation(openapi, method, _example(pattern))


def _fake_serves(call: api.ApiCall[Any]) -> bool:
    routes = FakeHpcApi()._routes()
    return any(re.fullmatch(p, call.path) and m == call.method for p, (m, _) in routes)


@pytest.mark.parametrize("name", sorted(n for n, c in CONTRACTS.items() if _fake_serves(c.call)))
def test_the_fakes_answers_are_the_servers(openapi: Schema, name: str) -> None:
    """Each call answered by the fake: a status code and a body the server declares."""
    call = CONTRACTS[name].call
    fake = FakeHpcApi()
    fake.next_id = int(JOB)
    fake.add_job()
    files = {"file": ("f.txt", b"data\n")} if name == "upload" else None
    request = httpx.Client(base_url=BASE_URL).build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        files=files,
        headers={**call.headers, "Authorization": "Bearer static-token-123"},
    )
    request.read()
    answer = fake.handle(request)
    responses = operation(openapi, call.method, call.path)["responses"]
    assert str(answer.status_code) in responses, answer.text
    schema = _json_schema(responses[str(answer.status_code)])
    if schema is not None:
        jsonschema.validate(answer.json(), {**schema, "components": openapi["components"]})
