"""Running the server: health checks, metrics and logs."""
