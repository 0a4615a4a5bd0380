"""hpcgate: a FirecREST v2 compatible REST API server for Slurm clusters, over SSH as the user."""

__version__ = "0.1.0"
