"""Cluster files as fsspec / ``ObjectStoragePath`` (scheme ``hpc``).

Importing this package registers the ``hpc`` protocol with fsspec and universal_pathlib
(the distribution's ``fsspec.specs`` and ``universal_pathlib.implementations`` entry
points do the same without an import).
"""

from __future__ import annotations

from airflow_provider_hpc.fs.filesystem import HpcFileSystem, HpcPath, get_fs, schemes

__all__ = ["HpcFileSystem", "HpcPath", "get_fs", "schemes"]
