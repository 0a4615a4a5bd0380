"""Browser tests: the real Airflow web UI in headless Chromium."""
