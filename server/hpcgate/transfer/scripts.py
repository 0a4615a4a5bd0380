"""The batch scripts of transfer jobs.

Every value that came from a request (paths, a match pattern) enters a script only
through ``shlex.quote`` and only as a command argument, never as code or as a
``printf`` format. Paths were checked by the path policy first (absolute, no NUL
or newline). On success each script prints the line pyfirecrest looks for in the
output log ("Files were successfully ...", "File was successfully ...",
"Multipart file upload successfully completed"); on failure it says why on
standard error and exits non-zero.

rm, compress and extract run the functions of ``hpcgate.filesystem.shellops`` (the
same code as the ops/ routes): their directories are reached component by
component and checked, so a symlink a co-tenant swaps in before or while the job
runs is refused, never followed; extract goes through a private directory.
"""

from __future__ import annotations

import posixpath
from shlex import quote

from hpcgate.filesystem import shellops
from hpcgate.filesystem.models import CompressionType

_HEADER = """#!/bin/bash
# hpcgate transfer job: {what}
set -u -o pipefail
"""


def _script(what: str, body: str) -> str:
    return _HEADER.format(what=what) + body


def _report(command: str, success: str, failure: str, *values: str) -> str:
    """Run ``command``; print ``success`` (a printf format) or ``failure``, exit 1."""
    arguments = " ".join(quote(value) for value in values)
    on_success = quote(success + "\\n")
    on_failure = quote(failure + " (exit status %s)\\n")
    return (
        f"if {command}; then\n"
        f"    printf {on_success} {arguments}\n"
        f"else\n"
        f"    status=$?\n"
        f'    printf {on_failure} {arguments} "$status" >&2\n'
        f"    exit 1\n"
        f"fi\n"
    )


def move(source: str, target: str) -> str:
    command = f"mv -- {quote(source)} {quote(target)}"
    return _script(
        "mv",
        _report(
            command,
            "Files were successfully moved from %s to %s",
            "Moving %s to %s failed",
            source,
            target,
        ),
    )


def copy(source: str, target: str, *, dereference: bool = False) -> str:
    links = "-L" if dereference else "-P"
    command = f"cp -R {links} --preserve=mode,timestamps -- {quote(source)} {quote(target)}"
    return _script(
        "cp",
        _report(
            command,
            "Files were successfully copied from %s to %s",
            "Copying %s to %s failed",
            source,
            target,
        ),
    )


def _call(call: list[str]) -> str:
    """A call of a ``shellops`` function, every argument quoted."""
    return " ".join(quote(word) for word in call)


def remove(path: str) -> str:
    directory, name = posixpath.split(path)
    command = _call(shellops.remove_call(directory or "/", name))
    return _script(
        "rm",
        shellops.LIBRARY
        + _report(command, "Files were successfully removed: %s", "Removing %s failed", path),
    )


def compress(
    source: str,
    target: str,
    *,
    match_pattern: str | None = None,
    dereference: bool = False,
    compression: CompressionType = "gzip",
) -> str:
    """tar ``source`` (relative to its parent) into ``target``; ``find -regex`` filters.

    Through a temporary file renamed over ``target`` (``shellops``); ``--no-unquote``:
    GNU tar would otherwise read backslash escapes in the names.
    """
    call = shellops.compress_call(
        source,
        target,
        match_pattern=match_pattern,
        dereference=dereference,
        compression=compression,
    )
    command = _call(call)
    return _script(
        "compress",
        shellops.LIBRARY
        + _report(
            command,
            "Files were successfully compressed from %s into %s",
            "Compressing %s into %s failed",
            source,
            target,
        ),
    )


def extract(source: str, target: str, *, compression: CompressionType = "gzip") -> str:
    """GNU tar into a private directory in ``target``, then renamed in (``shellops``)."""
    command = _call(shellops.extract_call(target, source, compression))
    return _script(
        "extract",
        shellops.LIBRARY
        + _report(
            command,
            "Files were successfully extracted from %s into %s",
            "Extracting %s into %s failed",
            source,
            target,
        ),
    )


def download_ready(path: str) -> str:
    """Checks the file is a readable regular file, then says it is ready."""
    command = f"test -f {quote(path)} && test -r {quote(path)}"
    return _script(
        "download",
        _report(
            command,
            "File was successfully made ready for download: %s",
            "%s is not a readable regular file",
            path,
        ),
    )


def await_upload(target: str, marker: str, size: int, deadline: int, poll: float) -> str:
    """Waits (until epoch ``deadline``) for the server's completion marker, then reports.

    The server writes ``marker`` (as the user, over SFTP) once it has renamed the
    uploaded file into place: ``ok`` or ``failed: <reason>``. The job removes it.
    """
    q_target, q_marker = quote(target), quote(marker)
    body = f"""target={q_target}
marker={q_marker}
while [ ! -e "$marker" ]; do
    if [ "$(date +%s)" -ge {int(deadline)} ]; then
        printf 'The upload to %s did not complete before its deadline\\n' "$target" >&2
        exit 1
    fi
    sleep {poll:g}
done
outcome=$(head -c 1024 -- "$marker")
rm -f -- "$marker"
if [ "$outcome" != ok ]; then
    printf 'The upload to %s failed: %s\\n' "$target" "$outcome" >&2
    exit 1
fi
size=$(stat -c %s -- "$target") || exit 1
if [ "$size" != {int(size)} ]; then
    printf '%s has %s bytes, expected {int(size)}\\n' "$target" "$size" >&2
    exit 1
fi
printf 'Multipart file upload successfully completed: %s (%s bytes)\\n' "$target" "$size"
"""
    return _script("upload", body)
