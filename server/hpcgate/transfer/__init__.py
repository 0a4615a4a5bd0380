"""Transfers: Slurm jobs for mv/cp/rm/compress/extract, signed-URL uploads and
downloads compatible with pyfirecrest's "s3" flow, and resumable (tus) uploads.

See ``multipart`` (transfer/upload and transfer/download), ``resumable`` (tus),
``signing`` (the URLs and their key), ``store`` with ``state``/``state_sqlite``/
``state_redis`` (durable state, shared by replicas), ``reaper`` (expired and orphaned
transfers) and ``docs/transfers.md``.
"""
