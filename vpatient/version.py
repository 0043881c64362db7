"""The package's version, in one place: ``vpatient.__version__``, pyproject's dynamic version and saved artefacts read it.

A module of its own so that modules which record the version (checkpoints, benchmark
results, reports) need not import the ``vpatient`` package, which re-exports them.
"""

__version__ = "0.1.0"
