"""Provider metadata read by Airflow's provider manager (entry point ``apache_airflow_provider``).

Pure data: importing this module touches no network, environment or connection.
"""

from __future__ import annotations

from typing import Any

NAME = "HPC (FirecREST v2)"
"""The provider's, the integration's and the connection type's name (one for all)."""
INTEGRATION = NAME
_OAUTH2 = "Only with Auth method oauth2 (ignored with token). "

#: The connection form (Airflow 3.2+: declarative, values land in ``Connection.extra``).
#: Airflow's form cannot show a field only for one auth method: the OAuth2 fields say so.
CONN_FIELDS: dict[str, Any] = {
    "system": {
        "label": "System",
        "description": "Default cluster (system) name, e.g. hpcsite; operators may name another.",
        "schema": {"type": ["string", "null"]},
    },
    "auth_method": {
        "label": "Auth method",
        "description": "token: the bearer token in the Token field. oauth2: the client "
        "credentials below, exchanged for short-lived tokens at the token URL.",
        "schema": {
            "type": "string",
            "enum": ["token", "oauth2"],
            "default": "token",
            "values_display": {
                "token": "token (a bearer token)",
                "oauth2": "oauth2 (client credentials)",
            },
        },
    },
    "token_url": {
        "label": "OAuth2 token URL",
        "description": _OAUTH2 + "The identity provider's token endpoint, e.g. "
        "https://idp.example.org/realms/hpc/protocol/openid-connect/token.",
        "schema": {"type": ["string", "null"]},
    },
    "client_id": {
        "label": "OAuth2 client id",
        "description": _OAUTH2 + "The client registered for Airflow, e.g. airflow.",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret": {
        "label": "OAuth2 client secret",
        "description": _OAUTH2 + "Stored encrypted, never logged.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "scope": {
        "label": "OAuth2 scope",
        "description": _OAUTH2 + "Space separated scopes to request (optional), e.g. openid hpc.",
        "schema": {"type": ["string", "null"]},
    },
    "audience": {
        "label": "OAuth2 audience",
        "description": _OAUTH2 + "Audience to request (optional; some issuers need it).",
        "schema": {"type": ["string", "null"]},
    },
    "verify_tls": {
        "label": "Verify TLS",
        "description": "Check the API's HTTPS certificate (and the token URL's). Turn off "
        "only for a test server; prefer a CA bundle for a private CA.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "ca_bundle": {
        "label": "CA bundle",
        "description": "Path, on the Airflow hosts, of a PEM file with the CA(s) to trust "
        "(optional; default: the system's), e.g. /etc/ssl/certs/site-ca.pem.",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Request timeout (s)",
        "description": "Seconds one API request may take (connecting: at most 10). "
        "Waiting for jobs is not bounded by it.",
        "schema": {"type": ["number", "null"], "default": 30, "minimum": 1},
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "hpcgate",
        "name": NAME,
        "description": (
            f"{NAME}: submit and wait on Slurm jobs and move data through a FirecREST v2 "
            "compatible API (hpcgate): deferrable job operator, job and file sensors, staging "
            "operators, job pages a person can open."
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
                    "airflow_provider_hpc.triggers.asset_events",
                ],
            }
        ],
        "filesystems": ["airflow_provider_hpc.fs.filesystem"],
        # the documentation page Admin > Providers links to; the Test button workaround
        "plugins": [
            {
                "name": "hpcgate",
                "plugin-class": "airflow_provider_hpc.plugins.provider.HpcProviderPlugin",
            }
        ],
        "extra-links": [
            "airflow_provider_hpc.links.job.HpcJobLink",
            "airflow_provider_hpc.links.job.HpcJobApiLink",
        ],
        "connection-types": [
            {
                "connection-type": "hpc",
                "hook-class-name": "airflow_provider_hpc.hooks.hpc.HpcHook",
                "hook-name": NAME,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"host": "API URL", "password": "Token (auth method token)"},
                    # Airflow 3.3's form shows placeholders of these standard fields
                    # only; the extra fields give their examples in the description
                    "placeholders": {
                        "host": "https://hpc-api.example.org",
                        "password": "bearer token (leave empty for OAuth2)",
                    },
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
