"""The filesystem interface over the pooled SSH connection's SFTP session.

Listing, stat, readlink, reads, writes, mkdir, rename, chmod, chown and symlink
are SFTP requests on the user's one shared SFTP channel: no remote process per
operation. Remote commands (as the user, argv quoted by the runner) only where
SFTP cannot do the work: ``sha256sum``, ``file``, ``cp``, rm, extract and compress
(``shellops``: they must not be redirected by a symlink swapped into a shared
directory while they run) and, for names no directory listing supplied, ``getent``.
chmod and chown never follow a symlink (lsetstat); listings are bounded
(``filesystem_limits``); every write goes through a private staged file
(``hpcgate.filesystem.staging``).

Each operation runs under the system's ``ssh.command_timeout`` (408 past it);
streamed reads and writes apply it to every chunk instead.

By concern: ``session`` (the user's session, checks), ``listing``, ``reading``
(with ``streams``), ``writing``, ``changes``, ``errors`` (SFTP errors as the
API's), ``state`` (what a system's requests share, owned by ``Services``).
"""

from __future__ import annotations

from hpcgate.filesystem.sftp.changes import ChangeOps
from hpcgate.filesystem.sftp.reading import ReadingOps
from hpcgate.filesystem.sftp.state import SystemState
from hpcgate.filesystem.sftp.writing import WritingOps
from hpcgate.filesystem.sftp_errors import sftp_errors


class SftpFilesystem(ChangeOps, WritingOps, ReadingOps):
    """``Filesystem`` for one user on one system, over the SSH pool.

    Cheap to create: make one per request (``Services.filesystem``).
    """


__all__ = ["SftpFilesystem", "SystemState", "sftp_errors"]
