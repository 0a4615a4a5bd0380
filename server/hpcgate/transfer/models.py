"""FirecREST v2 wire shapes of the transfer/* endpoints (camelCase out, either case in)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from hpcgate.compute.scheduler.models import SlurmName
from hpcgate.filesystem.models import CompressionType
from hpcgate.wire import WireModel

_SOURCE = AliasChoices("sourcePath", "source_path", "path")


class _Request(WireModel):
    source_path: str = Field(validation_alias=_SOURCE, description="an absolute path")
    account: SlurmName | None = Field(None, description="account of the transfer job")


class MoveRequest(_Request):
    target_path: str


class CopyRequest(_Request):
    target_path: str
    dereference: bool = False


class CompressRequest(_Request):
    target_path: str
    match_pattern: str | None = Field(None, description="find -regex over ./<name>/...")
    dereference: bool = False
    compression: CompressionType = "gzip"


class ExtractRequest(_Request):
    target_path: str = Field(description="the directory to extract into")
    compression: CompressionType = "gzip"


TransferMethod = Literal["s3", "streamer", "wormhole"]


class TransferDirectives(WireModel):
    """What the client asks for; only ``s3`` (this server's signed URLs) is served."""

    transfer_method: TransferMethod = "s3"
    file_size: int | None = Field(None, ge=0, description="bytes to upload")


class UploadRequest(_Request):
    """``path`` is the file to create; pyfirecrest before 2.4 sent a directory and
    ``fileName``/``fileSize`` instead, which is accepted too."""

    transfer_directives: TransferDirectives = TransferDirectives()
    file_name: str | None = Field(None, validation_alias=AliasChoices("fileName", "file_name"))
    file_size: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("fileSize", "file_size")
    )

    @model_validator(mode="after")
    def _size_given(self) -> UploadRequest:
        if self.transfer_directives.file_size is None and self.file_size is None:
            raise ValueError("transferDirectives.fileSize is required")
        return self

    @property
    def size(self) -> int:
        given = self.transfer_directives.file_size
        return given if given is not None else int(self.file_size or 0)


class DownloadRequest(_Request):
    transfer_directives: TransferDirectives = TransferDirectives()


class TransferJobLogs(WireModel):
    output_log: str
    error_log: str


class TransferJob(WireModel):
    job_id: str
    system: str
    working_directory: str
    logs: TransferJobLogs


class TransferJobResponse(WireModel):
    """mv, cp, rm, compress, extract."""

    transfer_job: TransferJob


class S3TransferResponse(WireModel):
    transfer_method: Literal["s3"] = "s3"
    download_url: str | None = None
    parts_upload_urls: list[str] | None = None
    complete_upload_url: str | None = None
    max_part_size: int | None = None


class TransferResponse(WireModel):
    """upload and download."""

    transfer_job: TransferJob
    transfer_directives: S3TransferResponse
