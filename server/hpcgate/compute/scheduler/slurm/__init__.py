"""Slurm (22.05+) behind the ``Scheduler`` interface, driven as the user over SSH.

``scheduler`` is the backend; the other modules read and write Slurm's formats:
``fields`` (field separator and scalar formats), ``job_records`` (squeue and sacct
records), ``cluster_records`` (scontrol, sinfo, id, sacctmgr), ``sbatch`` (options,
script directives, answer), ``messages`` (error messages as API errors) and
``caches`` (the per-user caches).
"""

from hpcgate.compute.scheduler.slurm.scheduler import SlurmScheduler

__all__ = ["SlurmScheduler"]
