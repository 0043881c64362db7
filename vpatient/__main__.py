"""``python -m vpatient``: the same command line as ``vpatient``."""

from vpatient.cli import run

run()
