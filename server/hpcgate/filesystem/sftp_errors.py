"""SFTP errors as the API's errors (a path is named only as ``shown`` spells it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncssh

from hpcgate.cluster.remote import CommandResult
from hpcgate.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
)
from hpcgate.filesystem.paths import shown


@contextlib.contextmanager
def sftp_errors(path: str) -> Iterator[None]:
    """Turn SFTP errors about ``path`` into the API's errors."""
    try:
        yield
    except asyncssh.SFTPNoSuchFile:
        raise NotFound(f"No such file or directory: {shown(path)}") from None
    except asyncssh.SFTPPermissionDenied:
        raise Forbidden(f"Permission denied: {shown(path)}") from None
    except asyncssh.SFTPOpUnsupported as exc:
        raise BadRequest(f"Not supported by the cluster's SFTP server: {exc.reason}") from None
    except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection):
        raise
    except asyncssh.SFTPError as exc:
        reason = exc.reason if exc.reason and exc.reason != "Failure" else "operation failed"
        raise BadRequest(f"{reason}: {shown(path)}") from None


def changed(path: str) -> Conflict:
    return Conflict(
        f"The file changed since the download URL was issued: {shown(path)}; ask for a new URL"
    )


def command_error(result: CommandResult, command: str) -> ApiError:
    """The API error for a failed remote command, from what it printed."""
    text = (result.stderr.strip() or result.stdout.strip())[-2000:]
    message = text or f"{command} failed with exit status {result.exit_status}"
    if "No such file or directory" in text:
        return NotFound(message)
    if "Permission denied" in text or "Operation not permitted" in text:
        return Forbidden(message)
    return BadRequest(message)
