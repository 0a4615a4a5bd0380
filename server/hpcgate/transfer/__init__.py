"""Transfers: Slurm jobs for mv/cp/rm/compress/extract, signed-URL uploads and
downloads compatible with pyfirecrest's "s3" flow, and resumable (tus) uploads.

See ``multipart`` (transfer/upload and transfer/download), ``resumable`` (tus),
``signing`` (the URLs), ``store`` (state, in memory) and ``docs/transfers.md``.
"""
