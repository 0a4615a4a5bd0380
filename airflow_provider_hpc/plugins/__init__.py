"""Airflow plugins of the provider: its documentation, served by Airflow's API server."""
