"""User and group names of a cluster, by id and back, learned cheaply and cached.

SFTP attributes carry numeric ids. Names come first from the ``longname`` that
OpenSSH's sftp-server sends with every directory entry (``ls -l``'s owner and group
columns, free of charge), and otherwise from one ``getent`` call as the user for
all the ids a response still misses. Answers, unknown ids included, are kept for
``ttl`` seconds, at most ``max_entries`` per table.

``getent`` runs through the user's login shell, which the user controls (a
``.bashrc`` can print anything), so one ``IdNames`` serves one user only: what a
user's shell claims only ever reaches that user's own listings and chown/chgrp.
Only the names and ids that were asked for are kept, and ids outside 0..2^32-2
are refused (400) rather than sent to the cluster.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Iterable

from hpcgate.cluster.remote import CommandRunner
from hpcgate.errors import BadRequest

_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,255}\$?$")
_MAX_IDS_PER_CALL = 200
MAX_ID = 2**32 - 2
"""The largest uid/gid: 2^32-1 is (uid_t)-1, "no change" to chown(2)."""


def valid_name(name: str, what: str) -> str:
    """``name`` if it can be a user or group name (or a numeric id); else 400."""
    if not _NAME.match(name):
        raise BadRequest(f"Invalid {what} name: {name!r}")
    if name.isdigit() and int(name) > MAX_ID:
        raise BadRequest(f"Invalid {what} id {name}: ids are at most {MAX_ID}")
    return name


def valid_id(number: int, what: str) -> int:
    """``number`` if it is a uid/gid chown(2) accepts; else 400."""
    if not 0 <= number <= MAX_ID:
        raise BadRequest(f"Invalid {what} id {number}: ids are 0 to {MAX_ID}")
    return number


class _Table:
    """One direction of one database (passwd or group), with expiry and a size bound."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, str | None]:
        found = self._entries.get(key)
        if found is None or found[1] < time.monotonic():
            return False, None
        return True, found[0]

    def put(self, key: str, value: str | None) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (value, time.monotonic() + self.ttl)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the oldest answer goes first


class IdNames:
    """uid/gid to names and back for one user of one system."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 10_000) -> None:
        self._names = {db: _Table(ttl, max_entries) for db in ("passwd", "group")}
        self._ids = {db: _Table(ttl, max_entries) for db in ("passwd", "group")}
        self._lock = asyncio.Lock()

    def learn(self, uid: int | None, user: str, gid: int | None, group: str) -> None:
        """Remember names seen in an SFTP longname (numbers there mean 'unknown')."""
        if uid is not None and user and user != str(uid):
            self._names["passwd"].put(str(uid), user)
        if gid is not None and group and group != str(gid):
            self._names["group"].put(str(gid), group)

    def user(self, uid: int) -> str:
        """The user name of ``uid`` if known, else the number (as ``ls`` shows it)."""
        return self._names["passwd"].get(str(uid))[1] or str(uid)

    def group(self, gid: int) -> str:
        return self._names["group"].get(str(gid))[1] or str(gid)

    async def resolve(
        self, runner: CommandRunner, uids: Iterable[int], gids: Iterable[int]
    ) -> None:
        """Look up, in at most one ``getent`` per database, the ids not cached yet."""
        wanted = {"passwd": {str(i) for i in uids}, "group": {str(i) for i in gids}}
        if not any(self._missing(self._names[db], keys) for db, keys in wanted.items()):
            return
        async with self._lock:
            for db, keys in wanted.items():
                missing = self._missing(self._names[db], keys)
                if missing:
                    found = await self._getent(runner, db, missing)
                    for name, number in found.items():
                        if number in keys:  # only what was asked for is kept
                            self._names[db].put(number, name)
                    for key in missing:
                        if not self._names[db].get(key)[0]:
                            self._names[db].put(key, None)

    async def id_of(self, runner: CommandRunner, db: str, name: str) -> int | None:
        """The numeric id of user (``db="passwd"``) or group ``name``, or None.

        ``BadRequest`` for a number (given, or claimed by ``getent``) beyond ``MAX_ID``.
        """
        what = "user" if db == "passwd" else "group"
        if name.isdigit():
            return valid_id(int(name), what)
        known, number = self._ids[db].get(name)
        if not known:
            found = await self._getent(runner, db, [name])
            number = found.get(name)
            self._ids[db].put(name, number)
            if number is not None:
                self._names[db].put(number, name)
        if number is None:
            return None
        return valid_id(int(number), what)

    @staticmethod
    def _missing(table: _Table, keys: set[str]) -> list[str]:
        return sorted(key for key in keys if not table.get(key)[0])

    @staticmethod
    async def _getent(runner: CommandRunner, db: str, keys: list[str]) -> dict[str, str]:
        """name -> id for the entries ``getent`` knows (it exits 2 if some are missing)."""
        found: dict[str, str] = {}
        for start in range(0, len(keys), _MAX_IDS_PER_CALL):
            batch = keys[start : start + _MAX_IDS_PER_CALL]
            result = await runner.run(["getent", db, "--", *batch])
            for line in result.stdout.splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[2].isdigit() and len(fields[2]) <= 10:
                    found[fields[0]] = fields[2]
        return found
