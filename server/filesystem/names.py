"""User and group names of a cluster, by id and back, learned cheaply and cached.

SFTP attributes carry numeric ids. Names come first from the ``longname`` that
OpenSSH's sftp-server sends with every directory entry (``ls -l``'s owner and group
columns, free of charge), and otherwise from one ``getent`` call as the user for
all the ids a response still misses. Answers, unknown ids included, are kept for
``ttl`` seconds; one cache serves every user of a system (ids are system-wide).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable

from hpcgate.errors import BadRequest
from hpcgate.remote import CommandRunner

_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,255}\$?$")
_MAX_IDS_PER_CALL = 200


def valid_name(name: str, what: str) -> str:
    """``name`` if it can be a user or group name (or a numeric id); else 400."""
    if not _NAME.match(name):
        raise BadRequest(f"Invalid {what} name: {name!r}")
    return name


class _Table:
    """One direction of one database (passwd or group), with expiry."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[str | None, float]] = {}

    def get(self, key: str) -> tuple[bool, str | None]:
        found = self._entries.get(key)
        if found is None or found[1] < time.monotonic():
            return False, None
        return True, found[0]

    def put(self, key: str, value: str | None) -> None:
        self._entries[key] = (value, time.monotonic() + self.ttl)


class IdNames:
    """uid/gid to names and back for one system."""

    def __init__(self, ttl: float = 600.0) -> None:
        self._names = {db: _Table(ttl) for db in ("passwd", "group")}
        self._ids = {db: _Table(ttl) for db in ("passwd", "group")}
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
                    for name, number in (await self._getent(runner, db, missing)).items():
                        self._names[db].put(number, name)
                        self._ids[db].put(name, number)
                    for key in missing:
                        if not self._names[db].get(key)[0]:
                            self._names[db].put(key, None)

    async def id_of(self, runner: CommandRunner, db: str, name: str) -> int | None:
        """The numeric id of user (``db="passwd"``) or group ``name``, or None."""
        if name.isdigit():
            return int(name)
        known, number = self._ids[db].get(name)
        if not known:
            found = await self._getent(runner, db, [name])
            number = next((n for entry, n in found.items() if entry == name), None)
            self._ids[db].put(name, number)
            if number is not None:
                self._names[db].put(number, name)
        return int(number) if number is not None else None

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
                if len(fields) >= 3 and fields[2].isdigit():
                    found[fields[0]] = fields[2]
        return found
