"""What one system's filesystem requests share, and what stays per user."""

from __future__ import annotations

from collections import OrderedDict

from hpcgate.config import SystemSettings
from hpcgate.filesystem.names import IdNames
from hpcgate.filesystem.paths import PathPolicy, WriteGuard
from hpcgate.filesystem.sftp.quota import StreamQuota

_MAX_USERS = 4096


class SystemState:
    """What one system's filesystem requests share: the path policy (configuration),
    the write guard, the per-user count of open streamed transfers (``streams``) and,
    per user, what was learned through that user's own sessions.

    One per configured system, owned by ``hpcgate.services.Services`` (which lives as
    long as the application), never hidden in a module-level cache.

    Nothing learned as one user serves another: ``getent`` runs through the user's
    login shell, which that user controls, so each user has their own ``IdNames``
    (least recently used users are forgotten beyond ``_MAX_USERS``). The write
    guard keeps the roots' real paths per SFTP session (see ``WriteGuard``).
    """

    def __init__(self, system: SystemSettings) -> None:
        self.system = system
        self.policy = PathPolicy(system.name, (fs.path for fs in system.filesystems))
        self.guard = WriteGuard(self.policy)
        self.streams = StreamQuota(system.filesystem_limits.max_streams_per_user)
        self._names: OrderedDict[str, IdNames] = OrderedDict()

    def names(self, username: str) -> IdNames:
        found = self._names.pop(username, None) or IdNames()
        self._names[username] = found
        while len(self._names) > _MAX_USERS:
            self._names.popitem(last=False)
        return found
