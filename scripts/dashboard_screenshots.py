"""Screenshots of every dashboard view for two patients, for docs/dashboard/ (rerun after changing the dashboard).

Serves ``vpatient dashboard`` on localhost with the demo PBC model (or ``--model DIR``), opens it in
Debian's Chromium (Playwright), and for each patient opens every view of
``vpatient.dashboard.views.VIEWS`` in turn, saving the whole page as
``OUT/patient-<id>-<view>.png`` (``patient-1-what-if.png``). The server and every process it
started are stopped at the end, also when a step fails.

    PYTHONPATH=. python scripts/dashboard_screenshots.py [--patients 1 32] [--out docs/dashboard]

Needs /usr/bin/chromium (``make chromium``) and the demo model (``vpatient dashboard`` trains it once).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from vpatient.dashboard import browser as vb
from vpatient.dashboard import session as vs
from vpatient.dashboard.views import VIEWS

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1400  # pixels: the width of a laptop screen; the height follows the page
#: Views that compute only when a button is pressed: the screenshot shows their result, not the empty form.
RUN_BUTTONS = {"Cohort & trial": "Run the trial"}


def file_name(patient: str, view: str) -> str:
    """``patient-1-what-if.png`` for patient 1's What-if view."""
    return f"patient-{patient}-{re.sub(r'[^a-z0-9]+', '-', view.lower()).strip('-')}.png"


def shrink(path: Path) -> None:
    """Rewrite the PNG with a 256-colour palette: a third of the size, and the screenshot reads the same."""
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the demo PBC model)")
    parser.add_argument("--patients", nargs="+", default=["1", "32"], help="subject ids to show")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard"), help="folder of the PNGs")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"error: {CHROMIUM} is absent: install Debian's chromium package (make chromium)")
    model_dir = vs.resolve_model_dir(args.model, train_demo=False)
    args.out.mkdir(parents=True, exist_ok=True)
    with vb.served(model_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=vb.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.goto(url)
            page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
            vb.settled(page, 120_000)
            for patient in args.patients:
                vb.select_patient(page, patient)
                for view in VIEWS:
                    page.set_viewport_size({"width": WIDTH, "height": 1000})
                    start = time.perf_counter()
                    vb.open_view(page, view)
                    if view in RUN_BUTTONS:
                        page.get_by_role("button", name=RUN_BUTTONS[view]).click()
                        vb.settled(page, 300_000)
                    shown = time.perf_counter() - start
                    if page.locator('[data-testid="stException"]').count():
                        raise RuntimeError(f"patient {patient}, {view}: the app raised an exception")
                    vb.show_whole_page(page, WIDTH)
                    path = args.out / file_name(patient, view)
                    page.screenshot(path=str(path), full_page=True)
                    shrink(path)
                    print(f"{path}: {view} of patient {patient} (shown in {shown:.1f} s)", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
