"""Headless Chromium driven by Selenium, on loopback, with a fresh profile per test module.

Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-browser``); screenshots
and page sources go to ``test-results/browser/`` (``HPCGATE_TEST_RESULTS`` overrides the
base folder), which the test runner keeps out of git.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
RESULTS = Path(os.environ.get("HPCGATE_TEST_RESULTS", REPO / "test-results")) / "browser"
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
    "--lang=en-US",
)


def _program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else "")
    if not path:
        pytest.fail(f"{name} is missing: run scripts/install-browser (Debian's chromium)")
    return path


class Browser:
    """A Selenium driver plus the few waits and records the tests need."""

    def __init__(self, driver: object, folder: Path) -> None:
        from selenium.webdriver.remote.webdriver import WebDriver

        assert isinstance(driver, WebDriver)
        self.driver = driver
        self.folder = folder
        self.shots: list[Path] = []

    def shot(self, name: str) -> Path:
        """Screenshot and page source as ``NN-name.png`` / ``.html``."""
        path = self.folder / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        path.with_suffix(".html").write_text(self.driver.page_source)
        self.shots.append(path)
        return path

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 30) -> object:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # the DOM changes under us while React renders
                last = exc
            time.sleep(0.25)
        self.shot("timeout")
        raise AssertionError(f"timed out waiting for {what} ({last!r})")

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)


@pytest.fixture(scope="module")
def browser(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium")
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = Service(executable_path=_program("chromedriver"))
    folder = RESULTS / request.module.__name__.rsplit(".", 1)[-1]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver, folder)
    finally:
        driver.quit()
