"""A person in Airflow 3's web UI, in headless Chromium: creates the ``hpc`` connection
in the form, triggers a DAG, opens the job from the task's "HPC Job" extra link and reads
the job's state and output there, without a token.

Real parts throughout: the four Airflow components (``airflow_stack``), the hpcgate
server and the local site, Debian's chromium. Screenshots of every step land in
``test-results/browser/test_airflow_ui/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import metadata
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from airflow_provider_hpc.get_provider_info import NAME
from airflow_provider_hpc.plugins.docs import DOCS_URL
from tests.provider.airflow_stack import AirflowStack, airflow_env
from tests.provider.browser.conftest import Browser
from tests.server import ApiServer

pytestmark = [pytest.mark.site, pytest.mark.e2e, pytest.mark.slow]

USER = "hpcuser1"
DAG = "hpc_submit_and_wait"


@pytest.fixture(scope="module")
def stack(api_server: ApiServer, airflow_home: Callable[[str], Path]) -> Iterator[AirflowStack]:
    home = airflow_home("airflow-browser")
    env = airflow_env(
        home,
        extra={
            "HPC_SYSTEM": api_server.system,
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        },
    )
    stack = AirflowStack(env).start()
    try:
        stack.wait_ready(dag_ids=[DAG], timeout=180)
        yield stack
    finally:
        stack.stop()


TEST_TOASTS = ("Test Connection Successful", "Test Connection Failed")

LABELS = (
    "API URL",
    "Token (auth method token)",
    "System",
    "Auth method",
    "OAuth2 token URL",
    "OAuth2 client id",
    "OAuth2 client secret",
    "OAuth2 scope",
    "OAuth2 audience",
    "Verify TLS",
    "CA bundle",
    "Request timeout (s)",
)


def _field(browser: Browser, name: str) -> WebElement:
    return browser.driver.find_element(By.NAME, name)


def _create_connection_in_the_form(
    browser: Browser, stack: AirflowStack, api_server: ApiServer
) -> None:
    d = browser.driver
    d.get(f"{stack.url}/connections")
    browser.wait_for(lambda: "Add Connection" in browser.text(), "the connection list")
    d.find_element(By.XPATH, "//button[contains(., 'Add Connection')]").click()
    browser.wait_for(lambda: "Connection Type" in browser.text(), "the add dialog")
    _field(browser, "connection_id").send_keys("hpc_default")
    kind = d.find_element(By.CSS_SELECTOR, "input[role=combobox]")
    kind.send_keys("HPC (FirecREST")
    browser.wait_for(lambda: NAME in browser.text(), "the connection type in the menu")
    browser.shot("connection-type-offered")
    kind.send_keys(Keys.ENTER)
    browser.wait_for(lambda: "API URL" in browser.text(), "the hpc form")
    browser.shot("connection-form-standard-fields")
    standard = browser.text()
    assert "Token (auth method token)" in standard
    assert _field(browser, "host").get_attribute("placeholder") == "https://hpc-api.example.org"
    _field(browser, "host").send_keys(api_server.url)
    _field(browser, "password").send_keys(api_server.token(USER, lifetime_seconds=7200))
    # the form shows one section at a time: Standard Fields, then Extra Fields
    d.find_element(By.XPATH, "//*[contains(text(), 'Extra Fields')]").click()
    browser.wait_for(lambda: "OAuth2 token URL" in browser.text(), "the extra fields")
    browser.shot("connection-form-extra-fields")
    text = standard + browser.text()
    missing = [label for label in LABELS if label not in text]
    assert not missing, f"labels missing from the form: {missing}"
    assert "Only with Auth method oauth2" in text  # the OAuth2 fields say when they count
    assert "Check the API's HTTPS certificate" in text and "Seconds one API request" in text
    assert _field(browser, "element_client_secret").get_attribute("type") == "password"
    # the auth method select: two choices, no literal null
    auth = _field(browser, "element_auth_method").find_element(By.XPATH, "..")
    auth.find_element(By.CSS_SELECTOR, "input[role=combobox]").click()
    options = browser.wait_for(
        lambda: [o.text for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")],
        "the auth method choices",
    )
    browser.shot("auth-method-choices")
    assert options == ["token (a bearer token)", "oauth2 (client credentials)"], options
    d.find_element(By.XPATH, "//*[@role='option'][contains(., 'token (a bearer')]").click()
    _field(browser, "element_system").send_keys(api_server.system)
    browser.shot("connection-filled")
    d.find_element(By.XPATH, "//button[contains(., 'Save')]").click()
    browser.wait_for(
        lambda: (
            "hpc_default" in browser.text()
            and "Add Connection" in browser.text()
            and not d.find_elements(By.NAME, "connection_id")
        ),
        "the saved connection in the list",
    )
    browser.shot("connection-saved")


def _press_test_in_the_list(browser: Browser, stack: AirflowStack) -> str:
    """The connection list's Test button for hpc_default; the toast it shows."""
    d = browser.driver
    d.get(f"{stack.url}/connections")
    browser.wait_for(lambda: "hpc_default" in browser.text(), "the connection list")
    row = "//tr[.//*[normalize-space()='hpc_default']]"
    d.find_element(By.XPATH, f"{row}//button[@aria-label='Test Connection']").click()
    outcome = browser.wait_for(
        lambda: next((t for t in TEST_TOASTS if t in browser.text()), None),
        "the Test button's answer",
        timeout=60,
    )
    browser.shot("connection-list-test-button")
    text = browser.text()
    return text[text.index(str(outcome)) :]


def _edit_dialog_buttons(browser: Browser) -> list[str]:
    """The edit dialog of hpc_default (open in the list): the labels of its buttons."""
    d = browser.driver
    row = "//tr[.//*[normalize-space()='hpc_default']]"
    d.find_element(By.XPATH, f"{row}//button[@aria-label='Edit Connection']").click()
    browser.wait_for(
        lambda: "Edit Connection" in browser.text() and "API URL" in browser.text(),
        "the edit dialog",
    )
    browser.shot("connection-edit-dialog")
    buttons = d.execute_script(
        "return [...document.querySelectorAll('[role=dialog] button')]"
        ".map(b => (b.textContent.trim() || b.getAttribute('aria-label') || ''))"
    )
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    return [str(label) for label in buttons]


def _task_page_links(
    browser: Browser, stack: AirflowStack, run_id: str, name: str
) -> dict[str, str]:
    """The task instance's Details tab; the extra links shown there (name -> href)."""
    d = browser.driver
    d.get(f"{stack.url}/dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/simulate/details")
    browser.wait_for(lambda: "Extra Links" in browser.text(), "the Extra Links", timeout=60)

    def links() -> dict[str, str]:
        # read in one script: the page re-renders while it polls the task
        pairs = d.execute_script(
            "return [...document.querySelectorAll('a')].map(a => [a.textContent.trim(), a.href])"
        )
        found = {text: href for text, href in pairs if text.startswith("HPC Job")}
        return found if found.get("HPC Job") else {}

    try:
        found = browser.wait_for(links, "the HPC Job extra links", timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; API: {stack.extra_links(DAG, run_id, 'simulate')}") from None
    browser.shot(name)
    assert isinstance(found, dict)
    return found


def _open_job_page(browser: Browser, url: str, name: str, wanted: str) -> str:
    browser.driver.get(url)
    browser.wait_for(lambda: wanted in browser.text(), f"{wanted} on the job page", timeout=60)
    browser.shot(name)
    return browser.text()


def test_a_person_creates_the_connection_and_follows_the_job_link(
    stack: AirflowStack, browser: Browser, api_server: ApiServer
) -> None:
    _create_connection_in_the_form(browser, stack, api_server)
    saved = stack.client.get("/api/v2/connections/hpc_default").json()
    assert saved["conn_type"] == "hpc" and saved["host"] == api_server.url, saved
    assert json.loads(saved["extra"])["system"] == api_server.system, saved
    # Airflow 3.3.2's list button sends port 0 (apache/airflow#73298): the provider's plugin
    # drops it for hpc connections, so the stored token is used and the hook's test runs
    toast = _press_test_in_the_list(browser, stack)
    assert toast.startswith("Test Connection Successful"), toast
    assert f"connected; systems: {api_server.system}" in toast, toast
    # 3.3.2's edit dialog has no Test button (the list's is the UI's only one)
    buttons = _edit_dialog_buttons(browser)
    assert "Save" in buttons and not [b for b in buttons if "test" in b.lower()], buttons
    # and the CLI, as the README says
    tested = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "test", "hpc_default"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0 and "Connection success!" in tested.stdout, (
        tested.stdout + tested.stderr
    )

    run_id = stack.trigger(DAG, {"steps": 15})
    stack.wait_task(DAG, run_id, "simulate", {"deferred"}, timeout=180, interval=0.5)
    job_id = str(stack.xcom(DAG, run_id, "simulate", "job_id"))
    links = _task_page_links(browser, stack, run_id, "task-deferred-extra-links")
    assert links["HPC Job (API)"].endswith(f"/compute/{api_server.system}/jobs/{job_id}")
    page_url = links["HPC Job"]
    assert page_url.startswith(f"{api_server.url}/job-pages/{api_server.system}/{job_id}?")
    assert "token" not in page_url.lower() and "Bearer" not in page_url
    while_deferred = _open_job_page(browser, page_url, "job-page-while-deferred", f"Job {job_id}")
    assert any(state in while_deferred for state in ("RUNNING", "PENDING", "COMPLETED"))

    run = stack.wait_run(DAG, run_id, timeout=240)
    assert run["state"] == "success", stack.diagnostics(DAG, run_id)
    after = _task_page_links(browser, stack, run_id, "task-done-extra-links")["HPC Job"]
    page = _open_job_page(browser, after, "job-page-after", "COMPLETED")
    assert f"Job {job_id} on {api_server.system}" in page
    assert "Exit code\n0" in page or "Exit code 0" in page, page
    assert "step 15" in page and "result=42" in page  # the job's stdout
    assert "simulating on" in page

    # the raw API link is for tools: a browser without a token gets the API's 401
    browser.driver.get(links["HPC Job (API)"])
    browser.wait_for(lambda: "Missing bearer token" in browser.text(), "the API's 401")
    browser.shot("api-link-needs-a-token")


def test_admin_providers_names_the_provider_and_links_its_documentation(
    stack: AirflowStack, browser: Browser
) -> None:
    d = browser.driver
    d.get(f"{stack.url}/providers")
    browser.wait_for(lambda: "hpcgate" in browser.text(), "the provider list")
    browser.shot("providers")
    assert f"{NAME}: submit and wait on Slurm jobs" in browser.text()
    documentation = [
        url.split(",", 1)[1].strip()
        for url in metadata("hpcgate").get_all("Project-URL") or []
        if url.split(",", 1)[0].strip().lower() == "documentation"
    ]
    assert documentation == [DOCS_URL]  # relative: resolved against the UI's base URL
    link = d.find_element(By.XPATH, "//a[normalize-space()='hpcgate']")
    assert link.get_attribute("href") == f"{stack.url}/{DOCS_URL}"
    before = set(d.window_handles)
    link.click()  # opens a new tab (target=_blank)
    [tab] = browser.wait_for(lambda: set(d.window_handles) - before, "the documentation tab")
    d.switch_to.window(tab)
    try:
        browser.wait_for(lambda: "Connection (conn_type hpc" in browser.text(), "the docs")
        browser.shot("provider-documentation")
        assert d.current_url == f"{stack.url}/{DOCS_URL}"
        assert d.title == f"{NAME} — Airflow provider (hpcgate 0.1.0)"
        page = browser.text()
        assert "Operators, sensors, triggers, links" in page and "HpcSubmitJobOperator" in page
        assert not d.find_elements(By.TAG_NAME, "script")
    finally:
        d.close()
        d.switch_to.window(next(iter(before)))
