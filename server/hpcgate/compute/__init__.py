"""Jobs: their rules (``jobs``: states, ids, array summaries), the scheduler interface
and its Slurm backend, the shared job watcher, job events and exactly-once submission."""
