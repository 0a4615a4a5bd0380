"""The reaper: what nobody will finish is cleaned up, as its user.

At start and every ``transfer.reap_interval_seconds``, at most ``BATCH`` records of
each sort are looked at:

* **expired** (past ``expires_at``): an upload still open or being created has its
  Slurm job cancelled (``Scheduler.cancel``, as the owning user, through the
  scheduler interface) and its staged file and ``.hpcgate-upload-*`` directory
  removed (``Filesystem.discard_staged``, as the owning user: ``unlink`` and
  ``rmdir`` never follow a symlink, see docs/security.md 2.9); then the record goes.
  Completed uploads and downloads just lose their record.
* **orphaned**: a transfer still being created whose creating process is gone (killed
  between making its temporary file or job and answering): the same cleanup. Its
  client never got its URLs, so nobody can finish it.

An open upload whose process died is *not* an orphan: its record lives on, and any
server sharing the store (the restarted one, another replica) serves it. Each record
is reaped under the ``reap`` claim, so two replicas never reap the same one; a failed
step is retried at the next pass (the record stays until its cleanup worked, or
for a day).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hpcgate.errors import ApiError, Conflict, NotFound
from hpcgate.transfer.store import Download, MultipartUpload, ResumableUpload, Transfer

if TYPE_CHECKING:
    from hpcgate.transfer.service import TransferService

log = logging.getLogger(__name__)

BATCH = 50
_GIVE_UP_SECONDS = 86_400.0


class Reaper:
    """Cleans up expired and orphaned transfers of one ``TransferService``."""

    def __init__(self, service: TransferService) -> None:
        self.service = service
        self.reaped = 0

    async def run_forever(self) -> None:
        interval = self.service.config.reap_interval_seconds
        while True:
            try:
                await self.run_once()
            except Exception:
                log.warning("transfer reaper: pass failed", exc_info=True)
            await asyncio.sleep(interval)

    async def run_once(self) -> int:
        """One bounded pass; the number of transfers cleaned up."""
        store = self.service.store
        done = 0
        for transfer in await store.due(BATCH):
            expired = transfer.expires_at < self.service.clock()
            if not expired and (transfer.state != "creating" or await store.alive(transfer.owner)):
                continue
            try:
                async with store.claimed(
                    transfer, "reap", blockers=("reap", "patch", "part:", "complete")
                ):
                    fresh = await store.reload(transfer)
                    await self._clean(fresh, "expired" if expired else "orphaned")
                    await store.remove(transfer.id)
            except (Conflict, NotFound):
                continue  # being reaped or finished elsewhere
            except Exception as exc:
                log.warning(
                    "transfer reaper: cleanup failed",
                    extra={"transfer": transfer.id, "error": type(exc).__name__},
                )
                if self.service.clock() - transfer.expires_at > _GIVE_UP_SECONDS:
                    await store.remove(transfer.id)
                continue
            done += 1
        self.reaped += done
        return done

    async def _clean(self, transfer: Transfer, reason: str) -> None:
        """Cancel the job and remove the staged file of an unfinished upload."""
        if isinstance(transfer, Download) or transfer.state not in ("creating", "open"):
            return
        side = self.service.side_of(transfer)
        if isinstance(transfer, MultipartUpload) and transfer.job_id:
            scheduler = self.service.schedulers[transfer.system]
            try:
                await scheduler.cancel(side.runner, transfer.job_id)
            except NotFound:
                pass  # long gone from the controller
            except ApiError as exc:
                if exc.status_code >= 500:
                    raise
        if isinstance(transfer, MultipartUpload | ResumableUpload) and transfer.staged:
            await side.fs.discard_staged(transfer.staged)
        log.info(
            "transfer reaped",
            extra={
                "transfer": transfer.id,
                "reason": reason,
                "user": transfer.user,
                "job_id": getattr(transfer, "job_id", ""),
            },
        )
