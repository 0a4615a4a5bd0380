"""Provider metadata read by Airflow's provider manager (entry point `apache_airflow_provider`)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "hpcgate",
        "name": "HPC (FirecREST v2 compatible)",
        "description": "Submit and wait on Slurm jobs and move data through a FirecREST v2 API.",
        "versions": ["0.1.0"],
    }
