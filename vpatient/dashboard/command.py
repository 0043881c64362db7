"""``vpatient dashboard``: serve the Streamlit app of this package on a trained model.

The app script is the module file ``app.py`` beside this one, so an installed package
(``pip install 'vpatient[dashboard]'``) starts it as a source checkout does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from vpatient.dashboard.session import MAX_UPLOAD_BYTES, MODEL_ENV, TOKEN_ENV, access_token, resolve_model_dir
from vpatient.errors import VPatientError

__all__ = ["APP_PATH", "dashboard_command"]

#: The Streamlit script, inside the installed package (``streamlit run`` needs a file on disk).
APP_PATH = Path(__file__).resolve().with_name("app.py")


def dashboard_command(
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Checkpoint directory (default: $VPATIENT_MODEL_DIR, else the demo PBC model)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Port to serve on (0: a free one).")] = 8501,
    address: Annotated[
        str, typer.Option("--address", "--host", help="Address to listen on (beyond localhost: give --token-file).")
    ] = "localhost",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser window.")] = False,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            dir_okay=False,
            help=f"File whose first line is the access token the app asks for (else ${TOKEN_ENV}); "
            "needed to serve beyond localhost.",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve beyond localhost without an access token (anyone reaching the port).")
    ] = False,
) -> None:
    """Start the clinician what-if dashboard (Streamlit) on a trained model."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise VPatientError("the dashboard needs Streamlit: pip install 'vpatient[dashboard]'") from None
    if not APP_PATH.is_file():
        raise VPatientError(f"dashboard app not found at {APP_PATH}: the vpatient installation is incomplete; reinstall it")
    token = access_token(address, token_file, insecure)  # refused before any model is trained or loaded
    model_dir = resolve_model_dir(model, train_demo=True).resolve()
    from vpatient.virtual_patient import VirtualPatientModel

    VirtualPatientModel.load(model_dir)  # a clear error now rather than in the browser
    if port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | {MODEL_ENV: str(model_dir)}
    if token is not None:
        env[TOKEN_ENV] = token
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true" if no_browser else "false",
        "--server.maxUploadSize",
        str(max(1, MAX_UPLOAD_BYTES // (1024 * 1024))),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        # views.keep_view_inputs writes the views' inputs back on purpose (to keep them across tabs), not by mistake
        "--global.disableWidgetStateDuplicationWarning",
        "true",
    ]
    typer.echo(f"vpatient dashboard on http://{address}:{port} (model {model_dir}); Ctrl+C stops it", err=True)
    if os.name == "posix":
        # Become the server rather than its parent: a service manager or test that stops this
        # process stops Streamlit itself, and no orphaned server is left listening.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, env)
    try:
        code = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)
