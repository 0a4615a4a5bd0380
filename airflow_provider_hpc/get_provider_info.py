"""Provider metadata read by Airflow's provider manager (entry point ``apache_airflow_provider``).

Pure data: importing this module touches no network, environment or connection.
"""

from __future__ import annotations

from typing import Any

INTEGRATION = "HPC (FirecREST v2)"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "hpcgate",
        "name": "HPC (FirecREST v2 compatible)",
        "description": (
            "Submit and wait on Slurm jobs and move data through a FirecREST v2 compatible API "
            "(hpcgate): deferrable job operator, job and file sensors, staging operators."
        ),
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["service", "compute"],
            }
        ],
        "hooks": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_hpc.hooks.hpc"]}
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hpc.operators.job",
                    "airflow_provider_hpc.operators.files",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hpc.sensors.job",
                    "airflow_provider_hpc.sensors.files",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_hpc.triggers.job",
                    "airflow_provider_hpc.triggers.files",
                ],
            }
        ],
        "extra-links": ["airflow_provider_hpc.links.job.HpcJobLink"],
        "connection-types": [
            {
                "connection-type": "hpc",
                "hook-class-name": "airflow_provider_hpc.hooks.hpc.HpcHook",
                "hook-name": INTEGRATION,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "API URL", "password": "Static token"},
                    "placeholders": {
                        "host": "https://hpc-api.example.org",
                        "password": "bearer token (auth method 'token')",
                    },
                },
                "conn-fields": {
                    "system": {
                        "label": "System",
                        "description": "Default cluster (system) name; operators may override it.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "auth_method": {
                        "label": "Auth method",
                        "description": "'token': the static token; 'oauth2': client credentials.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["token", "oauth2", None],
                            "default": "token",
                        },
                    },
                    "token_url": {
                        "label": "OAuth2 token URL",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "client_id": {
                        "label": "OAuth2 client id",
                        "schema": {"type": ["string", "null"]},
                    },
                    "client_secret": {
                        "label": "OAuth2 client secret",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "scope": {
                        "label": "OAuth2 scope",
                        "description": "Space separated scopes to request (optional).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "audience": {
                        "label": "OAuth2 audience",
                        "description": "Audience to request (optional; some issuers need it).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify_tls": {
                        "label": "Verify TLS",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                    "ca_bundle": {
                        "label": "CA bundle",
                        "description": "Path of a PEM file with the CA(s) to trust (optional).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "timeout": {
                        "label": "Request timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 30, "minimum": 1},
                    },
                },
            }
        ],
    }
