"""The package's version, in one place: ``vpatient.__version__``, pyproject's dynamic version and saved artefacts read it.

A module of its own so that modules which record the version (checkpoints, benchmark
results, reports) need not import the ``vpatient`` package, which re-exports them.
"""

__version__ = "0.1.0"


def source_digest() -> str:
    """A hash of the package's own Python sources: what a cache of computed results must also match.

    The version is bumped per release; the code changes between releases, and a result
    kept from older code must not be taken for the current code's.
    """
    import hashlib
    from pathlib import Path

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
