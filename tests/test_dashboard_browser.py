"""The dashboard in a real browser: `vpatient dashboard` served on localhost, driven by Playwright + Debian's Chromium.

Selects a patient, edits a plan, checks that the effect table updates, and saves a
full-page screenshot (copied to dashboards/screenshot.png for the docs when
VPATIENT_UPDATE_SCREENSHOT is set; a test run leaves the repository as it found it).
`make test` installs /usr/bin/chromium when it is missing; without it this test skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vpatient.dashboard import session as vs
from vpatient.datasets import load_dataset
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
PATIENT = "5"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer on {url} within {timeout:.0f} s")


def _settled(page, timeout_ms: int = 60_000) -> None:
    """Wait until the app has finished running its script (after a short grace for a rerun to start)."""
    page.wait_for_timeout(400)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)


def _effect_table_text(page) -> str:
    table = page.locator('[data-testid="stTable"]').filter(has_text="90% lower").first
    table.wait_for(timeout=60_000)
    return table.inner_text()


def test_dashboard_in_a_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package; `make test` installs it)")
    pytest.importorskip("streamlit")
    sync_api = pytest.importorskip("playwright.sync_api")

    cohort = load_dataset("pbc2")
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=2, seed=0), progress=False)
    model.data_source = "pbc2"
    model_dir = model.save(tmp_path / "model")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    launcher = "import typer; from vpatient.dashboard.command import dashboard_command; typer.run(dashboard_command)"
    env = os.environ | {"OMP_NUM_THREADS": "1", vs.HOME_ENV: str(tmp_path / "home")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            launcher,
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
            "--no-browser",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_server(url, server)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(url)
                page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
                _settled(page, 120_000)
                # Select a patient: search by id, then pick it in the list.
                search = page.get_by_label("Search by subject id")
                search.fill(PATIENT)
                search.press("Enter")
                _settled(page)
                page.locator('[data-testid="stSelectbox"]').filter(has_text="Patient").first.click()
                page.get_by_role("option", name=PATIENT, exact=True).click()
                _settled(page)
                page.get_by_text(f"Record of subject {PATIENT}").first.wait_for(state="attached", timeout=60_000)
                # The what-if tab (each tab computes when opened): read the effect table, edit a plan, see the table change.
                page.get_by_role("tab", name="What-if").click()
                _settled(page)
                page.get_by_text("All effects, in numbers").click()  # the full table sits under the headline numbers
                before = _effect_table_text(page)
                dose = page.get_by_label("Plan 1 dose")
                dose.fill("0.5")
                dose.press("Enter")
                _settled(page)
                deadline = time.monotonic() + 60
                after = _effect_table_text(page)
                while after == before and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                    after = _effect_table_text(page)
                assert after != before, "the effect table did not update after the plan edit"
                assert page.locator('[data-testid="stException"]').count() == 0
                # Streamlit scrolls inside its main container: a tall viewport shows the whole what-if tab.
                page.set_viewport_size({"width": 1500, "height": 2900})
                page.wait_for_timeout(800)
                shot = tmp_path / "dashboard-whatif.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("VPATIENT_UPDATE_SCREENSHOT"):  # refresh the docs' copy on request only
                    shutil.copyfile(shot, REPO / "dashboards" / "screenshot.png")
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    # stopping `vpatient dashboard` stopped the Streamlit server too: nothing listens any more
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "a Streamlit server outlived `vpatient dashboard`"
