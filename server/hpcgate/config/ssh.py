"""How the server reaches a system: SSH connection settings and user credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from hpcgate.config.base import Model


class SshSettings(Model):
    """How to reach a cluster's login node."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    known_hosts: Path = Field(description="OpenSSH known_hosts file holding the host key")
    connect_timeout: float = Field(10.0, gt=0)
    command_timeout: float = Field(60.0, gt=0, description="seconds before a command is 408")
    max_channels_per_connection: int = Field(
        32, ge=1, le=1024, description="keep below sshd's MaxSessions"
    )
    idle_timeout: float = Field(300.0, gt=0, description="close connections idle this long")
    keepalive_interval: float = Field(30.0, gt=0)
    ciphers: list[str] = Field(
        default_factory=lambda: [
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes256-ctr",
        ],
        min_length=1,
        description="preferred first: AES-GCM moves data ~2x faster than chacha20 where "
        "the CPU has AES instructions",
    )
    max_output_bytes: int = Field(
        64 * 1024**2,
        ge=64 * 1024,
        le=4 * 1024**3,
        description="largest stdout of one remote command (the user's login shell prints "
        "into it too), also the most stderr read; over it the command is stopped and the "
        "request fails with 502",
    )
    max_stderr_bytes: int = Field(
        1024**2,
        ge=4 * 1024,
        le=64 * 1024**2,
        description="stderr kept of one command for error messages (its head and tail); "
        "the rest is read and dropped",
    )
    max_output_bytes_per_user: int = Field(
        128 * 1024**2,
        ge=64 * 1024,
        le=16 * 1024**3,
        description="output held at once by all the running commands of one user on this "
        "system; the command that would go over it is stopped (502)",
    )

    @model_validator(mode="after")
    def _output_caps_fit(self) -> SshSettings:
        if self.max_stderr_bytes > self.max_output_bytes:
            raise ValueError("max_stderr_bytes must not exceed max_output_bytes")
        if self.max_output_bytes_per_user < self.max_output_bytes + self.max_stderr_bytes:
            raise ValueError(
                "max_output_bytes_per_user must be at least max_output_bytes + max_stderr_bytes"
            )
        return self


class CertificateAuthorityCredentials(Model):
    """The server's own SSH CA signs short-lived certificates for each user."""

    kind: Literal["ca"] = "ca"
    ca_key: Path = Field(description="private key of the SSH user CA that sshd trusts")
    certificate_minutes: int = Field(10, ge=1, le=24 * 60)
    renew_before_seconds: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _renewal_inside_validity(self) -> CertificateAuthorityCredentials:
        if self.renew_before_seconds >= self.certificate_minutes * 60:
            raise ValueError("renew_before_seconds must be shorter than the certificate's validity")
        return self


class StaticKeyCredentials(Model):
    """Per-user private keys read from files (``{username}`` in the pattern)."""

    kind: Literal["static_keys"] = "static_keys"
    key_path: str = Field(description="path pattern, e.g. /etc/hpcgate/keys/{username}")

    @field_validator("key_path")
    @classmethod
    def _has_username(cls, value: str) -> str:
        if "{username}" not in value:
            raise ValueError("must contain {username}")
        return value


Credentials = Annotated[
    CertificateAuthorityCredentials | StaticKeyCredentials, Field(discriminator="kind")
]
