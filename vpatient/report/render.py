"""Rendering: Jinja2 templates (autoescaped), figures as embedded PNG, PDF through WeasyPrint.

Every report is one self-contained HTML file: the stylesheet is inlined, figures are
base64 PNGs, and there is no JavaScript. Numbers are formatted by :func:`num` in the
templates, so a test can compare what is displayed with what the library returned.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt

from vpatient import formatting
from vpatient.atomic import staged_file, write_text_atomic
from vpatient.errors import VPatientError
from vpatient.plots import select_agg_backend

# Reports draw to files only: Agg, unless the caller chose a backend (a notebook's inline one, say).
select_agg_backend()

__all__ = ["figure_png", "model_version", "num", "render", "write_outputs"]

TEMPLATE_PACKAGE = "vpatient.report"


def num(value, digits: int = 3) -> str:
    """A value as displayed in every report (:func:`vpatient.formatting.value`): numbers to ``digits`` significant
    digits in plain notation, whole numbers whole, '–' when missing, a boolean as yes/no, text as it is."""
    return formatting.value(value, digits)


def interval(lower, upper, digits: int = 3) -> str:
    return f"{num(lower, digits)} to {num(upper, digits)}"


def figure_png(fig: plt.Figure, dpi: int = 90) -> str:
    """A matplotlib figure as a ``data:`` URI (PNG, no timestamp in its metadata); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_version(model_dir: str | Path | None) -> dict:
    """What identifies the model: vpatient's version and a digest of the checkpoint's weights and config."""
    from vpatient.version import __version__

    info = {"vpatient": __version__, "model_dir": str(model_dir) if model_dir else "(in memory)", "digest": "(not saved)"}
    if model_dir is not None:
        digest = hashlib.sha256()
        found = False
        for name in ("weights.pt", "config.json", "model.json", "scalers.json", "population.json"):
            path = Path(model_dir) / name
            if path.is_file():
                digest.update(name.encode() + path.read_bytes())
                found = True
        if found:
            info["digest"] = digest.hexdigest()[:16]
    return info


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "templates"),
        autoescape=True,  # every value is escaped: patient ids and plan names come from users
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = num
    env.globals["interval"] = interval
    return env


def render(template: str, **context) -> str:
    """The HTML of ``template`` (a name under templates/) with the stylesheet inlined."""
    css = resources.files(TEMPLATE_PACKAGE).joinpath("templates", "report.css").read_text(encoding="utf-8")
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(template).render(css=css, generated=generated, **context)


def write_outputs(html: str, out: str | Path | None, pdf: str | Path | None) -> list[Path]:
    """Write the HTML to ``out`` and, when asked, the PDF to ``pdf``; returns the paths written."""
    written = []
    if out is not None:
        written.append(write_text_atomic(out, html))
    if pdf is not None:
        try:
            from weasyprint import HTML
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise VPatientError(f"PDF output needs WeasyPrint: pip install 'vpatient[report]' ({exc})") from None
        path = Path(pdf)
        with staged_file(path) as staging:
            HTML(string=html, base_url=str(path.parent)).write_pdf(staging)
        written.append(path)
    return written
