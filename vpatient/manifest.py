"""The manifest of a checkpoint directory: the SHA-256 of every file its loaders read.

``manifest.json`` is written with the checkpoint and checked when it is loaded, so a
tampered or partly copied model is refused with the name of the file that differs or is
missing (on top of reading weights with ``weights_only=True``). Files added to the
directory later (the population model) are recorded with :func:`add_to_manifest`.
Checkpoints saved before manifests existed have none and load without the check.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from vpatient.errors import CheckpointError
from vpatient.staging import staging_file

__all__ = ["MANIFEST_FILE", "add_to_manifest", "sha256_of", "verify_manifest", "write_manifest"]

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, names: Iterable[str]) -> Path:
    """Record the digests of ``names`` (files in ``directory``, all required) in a new manifest."""
    directory = Path(directory)
    return _write(directory, {"files": {name: sha256_of(directory / name) for name in sorted(names)}, "optional": {}})


def add_to_manifest(directory: str | Path, name: str) -> None:
    """Record the digest of a file written into a checkpoint after it was saved (the population model).

    Such a file is optional: it may be deleted (it is fitted again), but not changed. A
    checkpoint without a manifest (saved before manifests existed) is left without one.
    """
    directory = Path(directory)
    manifest = _read(directory)
    if manifest is not None:
        manifest["optional"][name] = sha256_of(directory / name)
        _write(directory, manifest)


def verify_manifest(directory: str | Path) -> bool:
    """Check the files the manifest lists against their digests; False when there is no manifest.

    Raises :class:`CheckpointError` naming the first file that differs, or that is missing
    (an optional file may be missing).
    """
    directory = Path(directory)
    manifest = _read(directory)
    if manifest is None:
        return False
    for group, required in (("files", True), ("optional", False)):
        for name, digest in manifest[group].items():
            path = directory / name
            if Path(name).name != name or not path.is_file():
                if required or Path(name).name != name:
                    raise CheckpointError(
                        f"{directory} is not a complete vpatient checkpoint: {name} is missing (listed in {MANIFEST_FILE})"
                    )
                continue
            if sha256_of(path) != digest:
                raise CheckpointError(
                    f"{directory}: {name} is corrupted or was changed (its SHA-256 differs from the one {MANIFEST_FILE} "
                    "recorded when the model was saved)"
                )
    return True


def _read(directory: Path) -> dict[str, dict[str, str]] | None:
    """The manifest's groups (``files``: required, ``optional``): name -> SHA-256; None when there is none."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("algorithm") != "sha256":
            raise ValueError("not a sha256 manifest")
        return {group: {str(k): str(v) for k, v in data.get(group, {}).items()} for group in ("files", "optional")}
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({exc})") from None


def _write(directory: Path, manifest: dict[str, dict[str, str]]) -> Path:
    """Write the manifest atomically (a temporary file, then a rename): a reader never sees half of one."""
    path = directory / MANIFEST_FILE
    tmp = staging_file(path)
    tmp.write_text(json.dumps({"algorithm": "sha256", **manifest}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
