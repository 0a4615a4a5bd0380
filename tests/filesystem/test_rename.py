"""Filesystem.rename over SFTP on the real site (used by callers of the interface)."""

from __future__ import annotations

import uuid

import pytest

from hpcgate.cli import local_site_config
from hpcgate.cluster.sshpool import SshPool
from hpcgate.config import Settings
from hpcgate.errors import Forbidden, NotFound
from hpcgate.filesystem.sftp import SftpFilesystem

pytestmark = pytest.mark.site


async def test_rename_replaces_target_and_maps_errors(site_env, tmp_path) -> None:
    settings = Settings(**local_site_config(site_env.values, tmp_path))
    system = settings.systems[0]
    pool = SshPool(settings.systems)
    await pool.start()
    try:
        fs = SftpFilesystem(pool, system, "hpcuser1", pool.runner(system.name, "hpcuser1"))
        base = f"{site_env.scratch('hpcuser1')}/rename-{uuid.uuid4().hex[:8]}"
        async with pool.sftp(system.name, "hpcuser1") as sftp:
            for name, text in (("a", b"new"), ("b", b"old")):
                async with sftp.open(f"{base}-{name}", "wb") as handle:
                    await handle.write(text)
        await fs.rename(f"{base}-a", f"{base}-b")
        async with pool.sftp(system.name, "hpcuser1") as sftp:
            async with sftp.open(f"{base}-b", "rb") as handle:
                assert await handle.read() == b"new"
            assert not await sftp.exists(f"{base}-a")
        with pytest.raises(NotFound):
            await fs.rename(f"{base}-missing", f"{base}-c")
        other = SftpFilesystem(pool, system, "hpcuser2", pool.runner(system.name, "hpcuser2"))
        with pytest.raises(Forbidden):
            await other.rename(f"{base}-b", f"{site_env.scratch('hpcuser2')}/stolen")
    finally:
        await pool.close()
