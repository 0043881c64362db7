"""Process hygiene: stopping ``vpatient dashboard`` stops the Streamlit server it started, and nothing of it survives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from vpatient.dashboard import session as vs

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and SIGTERM are POSIX")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid`` (zombies are dead: not counted)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.slow  # Python, torch and Streamlit start in a subprocess: about 10 s
def test_sigterm_to_vpatient_dashboard_stops_the_server_and_everything_it_started(untrained_model_dir, tmp_path):
    pytest.importorskip("streamlit")
    port = _free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1", vs.HOME_ENV: str(tmp_path / "home")}
    command = [sys.executable, "-m", "vpatient", "dashboard", "--model", str(untrained_model_dir),
               "--port", str(port), "--address", "127.0.0.1", "--no-browser"]  # fmt: skip
    with (tmp_path / "dashboard.log").open("w") as log:
        dashboard = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = dashboard.pid  # a new session: its own process group, led by `vpatient dashboard`
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert dashboard.poll() is None, (
                f"vpatient dashboard exited ({dashboard.returncode}): {(tmp_path / 'dashboard.log').read_text()}"
            )
            assert time.monotonic() < deadline, "the dashboard did not listen within 120 s"
            time.sleep(0.2)
        os.kill(dashboard.pid, signal.SIGTERM)  # the vpatient process only, as a service manager stops it
        dashboard.wait(timeout=15)
        deadline = time.monotonic() + 5
        while (_listening(port) or _group(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(port), "a Streamlit server outlived `vpatient dashboard`"
        assert _group(pgid) == [], f"processes of the dashboard survived: {[p.cmdline() for p in _group(pgid)]}"
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever a failure left behind
        except ProcessLookupError:
            pass
        if dashboard.poll() is None:
            dashboard.wait(timeout=5)
