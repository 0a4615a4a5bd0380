"""transfer/mv, cp, rm, compress, extract: checked here, then done by a Slurm job.

Every path goes through the system's path policy (400 malformed, 403 outside) and
the existence and write-guard checks below before anything is submitted; the job
itself runs as the user, so the cluster's permissions decide the rest.
"""

from __future__ import annotations

import re
import stat

from hpcgate.errors import BadRequest, Forbidden
from hpcgate.filesystem.paths import shown
from hpcgate.transfer import scripts
from hpcgate.transfer.models import (
    CompressRequest,
    CopyRequest,
    ExtractRequest,
    MoveRequest,
    TransferJob,
)
from hpcgate.transfer.service import UserSide

MAX_PATTERN_LENGTH = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


async def _source(side: UserSide, raw: str, what: str = "source path") -> str:
    """A policy-checked path that exists (404 "No such file or directory" otherwise)."""
    path = side.fs.policy.check(raw, what=what)
    await side.fs.stat(path)
    return path


def _not_a_root(side: UserSide, path: str) -> None:
    if path in side.fs.policy.roots:
        raise Forbidden(f"Refusing to move or remove a filesystem root: {shown(path)}")


async def move(side: UserSide, body: MoveRequest) -> TransferJob:
    source = await _source(side, body.source_path)
    _not_a_root(side, source)
    await side.writable(body.source_path, "source path", follow=False)
    target = await side.writable(body.target_path, follow=False)
    return await side.submit("mv", scripts.move(source, target), account=body.account)


async def copy(side: UserSide, body: CopyRequest) -> TransferJob:
    source = await _source(side, body.source_path)
    target = await side.writable(body.target_path, follow=True)
    script = scripts.copy(source, target, dereference=body.dereference)
    return await side.submit("cp", script, account=body.account)


async def remove(side: UserSide, raw: str, account: str | None) -> TransferJob:
    path = await _source(side, raw, "path")
    _not_a_root(side, path)
    await side.writable(path, "path", follow=False)
    return await side.submit("rm", scripts.remove(path), account=account)


async def compress(side: UserSide, body: CompressRequest) -> TransferJob:
    pattern = body.match_pattern or None
    if pattern is not None and (len(pattern) > MAX_PATTERN_LENGTH or _CONTROL.search(pattern)):
        raise BadRequest(
            f"matchPattern must be at most {MAX_PATTERN_LENGTH} characters without "
            "control characters"
        )
    source = await _source(side, body.source_path)
    if source == "/":
        raise BadRequest("Cannot archive the root directory")
    target = await side.writable(body.target_path, follow=True)
    script = scripts.compress(
        source,
        target,
        match_pattern=pattern,
        dereference=body.dereference,
        compression=body.compression,
    )
    return await side.submit("compress", script, account=body.account)


async def extract(side: UserSide, body: ExtractRequest) -> TransferJob:
    source = await _source(side, body.source_path)
    if not stat.S_ISREG((await side.fs.stat(source, dereference=True)).mode):
        raise BadRequest(f"Not a regular file: {shown(source)}")
    target = await side.writable(body.target_path, follow=True)
    if not stat.S_ISDIR((await side.fs.stat(target, dereference=True)).mode):
        raise BadRequest(f"Not a directory: {shown(target)}")
    script = scripts.extract(source, target, compression=body.compression)
    return await side.submit("extract", script, account=body.account)
