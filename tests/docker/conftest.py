"""tests/docker: the images built and run for real (Docker engine: scripts/docker-engine).

Marked ``docker`` and ``site`` (they start whole sites, servers and Airflow in
containers), so the fast layer (``-m "not site"``) leaves them out; ``-m "not docker"``
leaves out only these. ``HPCGATE_DOCKER_BUILT=1`` uses the images as they are (built
by docker/build) instead of building them first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.docker import stack


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: builds and runs the Docker images (tests/docker)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.docker)
            if not item.get_closest_marker("site"):
                item.add_marker(pytest.mark.site)


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """The three images, built once per session (cold or warm: docker/build decides)."""
    stack.engine()
    if not os.environ.get("HPCGATE_DOCKER_BUILT"):
        seconds = stack.build_images()
        print(f"docker: images built in {seconds:.1f} s")
    client = stack.engine()
    for image in stack.IMAGES.values():
        client.images.get(image)  # raises when missing
    return stack.IMAGES


@pytest.fixture(scope="session")
def containers(docker_images: dict[str, str]) -> Iterator[stack.Stack]:
    """Site, server and Airflow containers (testcontainers), shared by the module's tests."""
    start = time.monotonic()
    with stack.container_stack(stack.CONTAINERS) as running:
        print(f"docker: containers up in {time.monotonic() - start:.1f} s {running.timings}")
        yield running
