"""Apache Airflow 3 provider for HPC clusters served by a FirecREST v2 compatible API."""

__version__ = "0.1.0"
