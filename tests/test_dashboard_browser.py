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
import time
from pathlib import Path

import pytest

from vpatient.dashboard import browser as vb

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
PATIENT = "5"

pytestmark = pytest.mark.slow


def _effect_table_text(page) -> str:
    table = page.locator('[data-testid="stTable"]').filter(has_text="90% lower").first
    table.wait_for(timeout=60_000)
    return table.inner_text()


def test_dashboard_in_a_browser(tmp_path, pbc_two_epoch_model_dir):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package; `make test` installs it)")
    pytest.importorskip("streamlit")
    sync_api = pytest.importorskip("playwright.sync_api")

    model_dir = Path(shutil.copytree(pbc_two_epoch_model_dir, tmp_path / "model"))  # trained once for the dashboard's tests

    log = (tmp_path / "server.log").open("w")
    try:
        with vb.served(model_dir, home=tmp_path / "home", log=log) as url, sync_api.sync_playwright() as pw:
            port = int(url.rsplit(":", 1)[1])
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=vb.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(url)
                page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
                vb.settled(page, 120_000)
                vb.select_patient(page, PATIENT)  # search by id, then pick it in the list
                page.get_by_text(f"Record of subject {PATIENT}").first.wait_for(state="attached", timeout=60_000)
                # The what-if tab (each tab computes when opened): read the effect table, edit a plan, see the table change.
                vb.open_view(page, "What-if")
                page.get_by_text("All effects, in numbers").click()  # the full table sits under the headline numbers
                before = _effect_table_text(page)
                dose = page.get_by_label("Plan 1 dose")
                dose.fill("0.5")
                dose.press("Enter")
                vb.settled(page)
                deadline = time.monotonic() + 60
                after = _effect_table_text(page)
                while after == before and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                    after = _effect_table_text(page)
                assert after != before, "the effect table did not update after the plan edit"
                assert page.locator('[data-testid="stException"]').count() == 0
                vb.show_whole_page(page, 1500)  # Streamlit scrolls inside its main container
                shot = tmp_path / "dashboard-whatif.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("VPATIENT_UPDATE_SCREENSHOT"):  # refresh the docs' copy on request only
                    shutil.copyfile(shot, REPO / "dashboards" / "screenshot.png")
            finally:
                browser.close()
    finally:
        log.close()
    # stopping `vpatient dashboard` stopped the Streamlit server too: nothing listens any more
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "a Streamlit server outlived `vpatient dashboard`"
