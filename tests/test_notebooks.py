"""The worked notebooks of ``notebooks/`` run end to end (tiny settings), so they cannot rot.

Each notebook has a cell tagged ``parameters``; its source is replaced with tiny values
before the notebook is executed with nbclient in a temporary working directory, on a
kernel spec written there that points at this interpreter (no user-installed kernel needed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "vpatient-notebook-test"

#: notebook -> (tiny parameters, files it must write, text its outputs must contain, figures shown inline)
CASES = {
    "01_quickstart_pbc.ipynb": (
        "EPOCHS = 2\nN_SAMPLES = 16",
        ["pbc_summary.md", "forecast.png", "whatif.png", "model_pbc/weights.pt"],
        ["# Cohort pbc2", "survival:death", "population fitted = True"],
        2,
    ),
    "02_cohorts_and_the_pbc_trial.ipynb": (
        "EPOCHS = 2\nN = 40\nDRAWS_PER_RECORD = 1",
        ["cohort/events", "cohort/meds", "cohort_km.png", "trial.md", "trial.png", "trial_vs_observed.png"],
        ["In-silico trial: placebo, D-penicillamine", "observed trial (Cox)"],
        3,
    ),
    "03_next_test_selection.ipynb": (
        "EPOCHS = 2\nN_SAMPLES = 16\nN_PATIENTS = 2",
        ["cost_curve.png", "information_curve.png"],
        ["liver_panel", "remaining_entropy", "held-out patients on the curve", "clairvoyant", "minus EIG per cost"],
        2,
    ),
}


def _kernel_spec(tmp: Path) -> Path:
    """A kernel spec named KERNEL under ``tmp``/kernels that runs ipykernel on this interpreter."""
    spec_dir = tmp / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vpatient (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return tmp


def _text(nb) -> str:
    """Every text output of the executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for mime in ("text/plain", "text/markdown"):
                if mime in out.get("data", {}):
                    parts.append(out["data"][mime])
    return "\n".join(parts)


def test_notebooks_are_stored_clean():
    """Committed notebooks carry no outputs, and each has exactly one parameters cell."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CASES)
    for name in CASES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    params, files, texts, n_figures = CASES[name]
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = params

    jupyter = _kernel_spec(tmp_path / "jupyter")
    work = tmp_path / "work"
    work.mkdir()
    # The kernel inherits this environment: our kernel spec, one thread per op (CI has few cores),
    # and the repository importable even where the package is not installed.
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(work)}}, allow_errors=False
    )
    client.execute()

    for f in files:
        assert (work / f).exists(), f"{name} did not write {f}"
    text = _text(nb)
    for t in texts:
        assert t in text, f"{name}: {t!r} not in its outputs"
    shown = sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
    assert shown == n_figures, f"{name}: {shown} figures shown inline, expected {n_figures}"
