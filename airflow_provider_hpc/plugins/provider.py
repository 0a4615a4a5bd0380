"""The provider's Airflow plugin: what it adds to Airflow's API server.

Registered twice on purpose, as Airflow's own providers do: the provider info's
``plugins`` (read only with ``[core] lazy_discover_providers = False``) and the
``airflow.plugins`` entry point (always); Airflow loads one instance by name.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_hpc.get_provider_info import NAME
from airflow_provider_hpc.plugins.docs import URL_PREFIX, create_app
from airflow_provider_hpc.plugins.test_button import HpcTestButtonMiddleware


class HpcProviderPlugin(AirflowPlugin):
    """The documentation page and the Test button workaround."""

    name = "hpcgate"
    fastapi_apps = [
        {"name": f"{NAME} documentation", "app": create_app(), "url_prefix": URL_PREFIX}
    ]
    fastapi_root_middlewares = [
        {"name": "hpc test button (apache/airflow#73298)", "middleware": HpcTestButtonMiddleware}
    ]
