"""The endpoint layer: one description per API call, run by the sync or the async client.

Each function returns an :class:`ApiCall` (method, path, body, whether it may be retried
blindly, and how to read the answer). The hook owns transport, auth and retries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from airflow_provider_hpc.exceptions import HpcApiError, HpcNotFoundError, HpcPreflightUnsupported
from airflow_provider_hpc.hooks.models import (
    ApiErrorBody,
    FileChecksum,
    FileChecksumResponse,
    FileContent,
    FileContentResponse,
    FileEntry,
    FileListResponse,
    FileStat,
    FileStatResponse,
    Job,
    JobAccounting,
    JobAccountingResponse,
    JobMetadata,
    JobMetadataResponse,
    JobPageLink,
    JobSpec,
    JobsResponse,
    JobSubmitted,
    PreflightResult,
    System,
    SystemsResponse,
    TextResponse,
    TransferJob,
    TransferResponse,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ApiCall(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: GET/DELETE/PUT and repeatable POSTs; non-idempotent calls are retried only when
    #: the server cannot have acted on them (connection refused, 429, 503).
    idempotent: bool = True


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def raise_for_error(response: httpx.Response) -> None:
    """Raise :class:`HpcApiError` (or :class:`HpcNotFoundError`) for a non-2xx answer."""
    if response.is_success:
        return
    error_type = None
    body: Any = None
    try:
        body = response.json()
        parsed = ApiErrorBody.model_validate(body)
        message, error_type = parsed.message or response.reason_phrase, parsed.error_type
        if not parsed.message and isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except (ValueError, ValidationError):
        message = (response.text or response.reason_phrase)[:500]
    cls = HpcNotFoundError if response.status_code == 404 else HpcApiError
    raise cls(
        response.status_code,
        message,
        error_type=error_type,
        method=response.request.method,
        url=str(response.request.url.copy_with(query=None)),
        body=body,
    )


def _nothing(response: httpx.Response) -> None:
    return None


def _model(model: type[Any]) -> Callable[[httpx.Response], Any]:
    def parse(response: httpx.Response) -> Any:
        return model.model_validate(response.json())

    return parse


def _required(value: T | None, what: str) -> T:
    if value is None:
        raise ValueError(f"the server's answer has no {what}")
    return value


# --------------------------------------------------------------------------- status


def systems() -> ApiCall[list[System]]:
    return ApiCall("GET", "/status/systems", lambda r: _model(SystemsResponse)(r).systems)


# --------------------------------------------------------------------------- compute


def submit_job(system: str, job: JobSpec, idempotency_key: str | None) -> ApiCall[str]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return ApiCall(
        "POST",
        f"/compute/{_seg(system)}/jobs",
        lambda r: _model(JobSubmitted)(r).job_id,
        json=job.to_wire(),
        headers=headers,
        idempotent=False,
    )


def get_job(system: str, job_id: str) -> ApiCall[list[Job]]:
    return ApiCall(
        "GET",
        f"/compute/{_seg(system)}/jobs/{_seg(job_id)}",
        lambda r: _model(JobsResponse)(r).jobs or [],
    )


def list_jobs(
    system: str, *, name: str | None = None, allusers: bool = False, time_window: str | None = None
) -> ApiCall[list[Job]]:
    """Active jobs plus those ended within ``time_window`` (1h, 8h, 24h, 3d, 7d)."""
    params: dict[str, Any] = {"allusers": "true" if allusers else "false"}
    if name:
        params["name"] = name
    if time_window:
        params["time_window"] = time_window
    return ApiCall(
        "GET", f"/compute/{_seg(system)}/jobs", lambda r: _model(JobsResponse)(r).jobs or [], params
    )


def cancel_job(system: str, job_id: str) -> ApiCall[None]:
    return ApiCall("DELETE", f"/compute/{_seg(system)}/jobs/{_seg(job_id)}", _nothing)


def job_metadata(system: str, job_id: str) -> ApiCall[list[JobMetadata]]:
    return ApiCall(
        "GET",
        f"/compute/{_seg(system)}/jobs/{_seg(job_id)}/metadata",
        lambda r: _model(JobMetadataResponse)(r).jobs or [],
    )


def job_page_link(system: str, job_id: str) -> ApiCall[str]:
    """hpcgate: a browser link to the job (signed, expiring; or the site portal's)."""

    return ApiCall(
        "POST",
        f"/compute/{_seg(system)}/jobs/{_seg(job_id)}/page-link",
        lambda r: _model(JobPageLink)(r).url,
    )


def preflight_job(system: str, job: JobSpec) -> ApiCall[PreflightResult]:
    """hpcgate: ``sbatch --test-only`` (``?dryRun=true``); submits nothing on hpcgate.

    A server without dry runs submits the job and answers 201 with its id: that is
    :class:`HpcPreflightUnsupported` (the hook cancels the job), and the call is not
    retried blindly, since on such a server every attempt is a submission.
    """

    def parse(response: httpx.Response) -> PreflightResult:
        body = response.json()
        if isinstance(body, dict) and "valid" not in body and body.get("jobId") is not None:
            raise HpcPreflightUnsupported(str(body["jobId"]))
        return PreflightResult.model_validate(body)

    return ApiCall(
        "POST",
        f"/compute/{_seg(system)}/jobs",
        parse,
        {"dryRun": "true"},
        json=job.to_wire(),
        idempotent=False,
    )


def job_accounting(system: str, job_id: str) -> ApiCall[JobAccounting]:
    """hpcgate: ``GET .../accounting``; an array's tasks are summed up."""

    def parse(response: httpx.Response) -> JobAccounting:
        records = _model(JobAccountingResponse)(response).jobs or []
        if not records:
            raise ValueError(f"the server's answer has no accounting for job {job_id}")
        return JobAccounting.from_records(str(job_id), records)

    return ApiCall("GET", f"/compute/{_seg(system)}/jobs/{_seg(job_id)}/accounting", parse)


# --------------------------------------------------------------------------- filesystem


def _fs(system: str, op: str) -> str:
    return f"/filesystem/{_seg(system)}/{op}"


def tail(system: str, path: str, *, lines: int | None, nbytes: int | None) -> ApiCall[FileContent]:
    params: dict[str, Any] = {"path": path}
    if lines is not None:
        params["lines"] = lines
    if nbytes is not None:
        params["bytes"] = nbytes
    return ApiCall(
        "GET",
        _fs(system, "ops/tail"),
        lambda r: _required(_model(FileContentResponse)(r).output, "output"),
        params,
    )


def view(system: str, path: str, *, offset: int, size: int) -> ApiCall[str]:
    return ApiCall(
        "GET",
        _fs(system, "ops/view"),
        lambda r: _model(TextResponse)(r).output or "",
        {"path": path, "offset": offset, "size": size},
    )


def stat(system: str, path: str, *, dereference: bool = False) -> ApiCall[FileStat]:
    params = {"path": path, "dereference": "true" if dereference else "false"}
    return ApiCall(
        "GET",
        _fs(system, "ops/stat"),
        lambda r: _required(_model(FileStatResponse)(r).output, "output"),
        params,
    )


def checksum(system: str, path: str) -> ApiCall[FileChecksum]:
    return ApiCall(
        "GET",
        _fs(system, "ops/checksum"),
        lambda r: _required(_model(FileChecksumResponse)(r).output, "output"),
        {"path": path},
    )


def ls(system: str, path: str, *, show_hidden: bool = False) -> ApiCall[list[FileEntry]]:
    params = {"path": path, "showHidden": "true" if show_hidden else "false"}
    return ApiCall(
        "GET", _fs(system, "ops/ls"), lambda r: _model(FileListResponse)(r).output or [], params
    )


def mkdir(system: str, path: str, *, parents: bool) -> ApiCall[None]:
    body = {"path": path, "parent": parents}
    return ApiCall("POST", _fs(system, "ops/mkdir"), _nothing, json=body, idempotent=parents)


def rm(system: str, path: str) -> ApiCall[None]:
    return ApiCall("DELETE", _fs(system, "ops/rm"), _nothing, {"path": path})


def symlink(system: str, target: str, link_path: str) -> ApiCall[None]:
    body = {"path": target, "linkPath": link_path}
    return ApiCall("POST", _fs(system, "ops/symlink"), _nothing, json=body, idempotent=False)


def transfer(system: str, op: str, source: str, target: str) -> ApiCall[TransferJob]:
    """``transfer/mv`` or ``transfer/cp``: answered with the data-movement job to wait for."""
    if op not in ("mv", "cp"):
        raise ValueError(f"unknown transfer operation {op!r}")
    return ApiCall(
        "POST",
        _fs(system, f"transfer/{op}"),
        lambda r: _model(TransferResponse)(r).transfer_job,
        json={"sourcePath": source, "targetPath": target},
        idempotent=op == "cp",
    )


def download(system: str, path: str) -> ApiCall[None]:
    """Raw bytes; the hook streams the body."""
    return ApiCall("GET", _fs(system, "ops/download"), _nothing, {"path": path})


def upload(system: str, directory: str) -> ApiCall[None]:
    """Multipart field ``file``; target ``directory/<filename>``. Overwrites: repeatable."""
    return ApiCall("POST", _fs(system, "ops/upload"), _nothing, {"path": directory})
