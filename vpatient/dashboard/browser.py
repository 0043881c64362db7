"""The dashboard served on localhost for a real browser: its browser test and its screenshots share this.

:func:`served` starts ``vpatient dashboard`` on a free port of 127.0.0.1 and, on leaving, stops
it and every process it started; the page helpers drive a Playwright page of it (wait until the
app has finished running its script, pick a patient, open a view, size the window to the page).
Nothing here imports Playwright: the caller brings the browser (``pip install 'vpatient[dashboard]'``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vpatient.dashboard.session import HOME_ENV

__all__ = ["CHROMIUM_ARGS", "free_port", "open_view", "select_patient", "served", "settled", "show_whole_page"]

#: Chromium flags for a headless run on a machine without a display, network or sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this vpatient: the server runs the same code


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(
    model_dir: str | Path, home: str | Path | None = None, log: IO[str] | None = None, timeout: float = 60.0
) -> Iterator[str]:
    """``vpatient dashboard --model model_dir`` on a free localhost port, for the ``with`` block; yields its URL.

    ``home`` is its ``$VPATIENT_HOME`` (default: the caller's); ``log`` gets its output. The server
    runs in a process group of its own, so that leaving stops it and whatever it started, and nothing else.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launcher = "import typer; from vpatient.dashboard.command import dashboard_command; typer.run(dashboard_command)"
    env = os.environ | {"OMP_NUM_THREADS": "1"} | ({HOME_ENV: str(home)} if home is not None else {})
    command = [
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
    ]
    server = subprocess.Popen(
        command,
        cwd=_SOURCE_ROOT,
        env=env,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_server(url, server, timeout)
        yield url
    finally:
        _stop(server)


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the dashboard did not answer on {url} within {timeout:.0f} s")


def _stop(server: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the server (``vpatient dashboard`` is the Streamlit server); it must take every process it started along.

    Whatever of its process group (created for it alone) is still running ``grace`` seconds after it
    exited is killed, and RuntimeError says so: stopping the command must stop the server.
    """
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    deadline = time.monotonic() + grace
    while _group_alive(server.pid):
        if time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            raise RuntimeError("processes of `vpatient dashboard` outlived it (killed now)")
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)  # signal 0: only asks whether the group has a process
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- driving a page (Playwright's Page)


def settled(page: Any, timeout_ms: int = 60_000) -> None:
    """Wait until the app has finished running its script (after a short grace for a rerun to start)."""
    page.wait_for_timeout(400)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)


def select_patient(page: Any, subject: str) -> None:
    """Search for ``subject`` in the sidebar and pick it in the patient list."""
    search = page.get_by_label("Search by subject id")
    search.fill(subject)
    search.press("Enter")
    settled(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Patient").first.click()
    page.get_by_role("option", name=subject, exact=True).click()
    settled(page)


def open_view(page: Any, view: str, timeout_ms: int = 120_000) -> None:
    """Click the tab of ``view`` (one of :data:`vpatient.dashboard.views.VIEWS`) and wait until it has computed."""
    page.get_by_role("tab", name=view).click()
    settled(page, timeout_ms)


#: The height of the page's content: Streamlit's main area scrolls inside the window (its block holds the content).
_CONTENT_HEIGHT = """() => document.querySelector('[data-testid="stMainBlockContainer"]').scrollHeight"""


def show_whole_page(page: Any, width: int, least: int = 900, most: int = 12_000, timeout_ms: int = 15_000) -> None:
    """Make the window as tall as the page (within ``least`` and ``most`` pixels): Streamlit scrolls inside its main
    area, which a full-page screenshot of a shorter window misses. Charts draw after the script has run, so the
    height is read until it stays the same for half a second (at most ``timeout_ms``), at the final size too."""
    height, waited = -1, 0
    while waited < timeout_ms:
        now = int(page.evaluate(_CONTENT_HEIGHT))
        if now == height:
            return
        height = now
        page.set_viewport_size({"width": width, "height": min(max(height, least), most)})
        page.wait_for_timeout(500)
        waited += 500
