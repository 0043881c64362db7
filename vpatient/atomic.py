"""Kill-safe writes: every output is staged beside its target and renamed into place.

A process killed at any moment (SIGKILL, a power cut after the fsync) leaves either the
previous file or folder or the complete new one, never half of one. Staging happens in
the target's own folder, so the final ``os.rename`` stays on one file system and is atomic.
Staged names start with a dot and end in ``.tmp`` (plus the target's suffix, so writers
that pick a format from the name, such as matplotlib, still work); a killed run may leave
one behind, hidden, and a rerun never reuses it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from vpatient.errors import OutputExistsError
from vpatient.staging import staging_dir, staging_file

__all__ = [
    "check_output_dir",
    "check_output_file",
    "move_into_place",
    "staged_dir",
    "staged_file",
    "staged_files",
    "unwind_on_sigterm",
    "write_bytes_atomic",
    "write_text_atomic",
]


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries, so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_files(paths: Sequence[str | Path], root: str | Path | None = None) -> Iterator[list[Path]]:
    """Temporary paths beside each of ``paths`` to write to; on success all are renamed into place together, on failure removed.

    When ``root``, the folder holding every path, does not exist yet, the whole folder is
    built beside it and renamed into place at once: a kill leaves no folder or all of it.
    Otherwise every staged file is fsynced before the first rename, so the renames follow
    one another closely: a kill leaves the previous set or the new one, unless it lands
    between two renames (each file is then still whole). A writer with nothing for one of
    the paths deletes its staged file: that target is left as it was.
    """
    targets = [Path(p) for p in paths]
    if root is not None and not Path(root).exists():
        with _staged_new_folder(Path(root), targets) as in_new_folder:
            yield in_new_folder
        return
    staged: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append(staging_file(target, keep_suffix=True))
        yield staged
        written = []
        for staging, target in zip(staged, targets, strict=True):
            if not staging.exists():  # the writer had nothing for this one
                continue
            with open(staging, "rb+") as f:
                os.fsync(f.fileno())
            written.append((staging, target))
        for staging, target in written:
            os.replace(staging, target)
    except BaseException:
        for staging in staged:
            staging.unlink(missing_ok=True)
        raise
    for folder in {target.parent for target in targets}:
        _fsync_dir(folder)


@contextlib.contextmanager
def _staged_new_folder(root: Path, targets: list[Path]) -> Iterator[list[Path]]:
    """``targets`` (all under ``root``, which does not exist) staged in a new folder beside ``root``, renamed into place at the end."""
    root.parent.mkdir(parents=True, exist_ok=True)
    folder = staging_dir(root)
    try:
        staged = [folder / target.relative_to(root) for target in targets]
        for staging in staged:
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.touch()
        yield staged
        for staging in staged:
            if staging.exists():  # else the writer had nothing for it
                with open(staging, "rb+") as f:
                    os.fsync(f.fileno())
        move_into_place(folder, root)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed onto ``path``, on failure removed.

    A writer with nothing to write deletes the staged file: ``path`` is then left as it was.
    """
    with staged_files([path]) as (staging,):
        yield staging


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` kill-safely (see the module docstring); returns ``path``."""
    with staged_file(path) as staging:
        staging.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` kill-safely (see the module docstring); returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out_dir``; an old one is moved aside first, then removed.

    Between the two renames ``out_dir`` is briefly absent (the old folder waits beside it
    as ``.NAME.XXXX.old``): a kill in that instant loses neither, but leaves neither in place.
    """
    _fsync_dir(tmp)
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        _fsync_dir(out_dir.parent)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rmdir(aside)
    os.rename(out_dir, aside)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(aside, out_dir)
        raise
    _fsync_dir(out_dir.parent)
    shutil.rmtree(aside, ignore_errors=True)


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder output that would replace a file, or a non-empty folder unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")


def check_output_file(path: Path, overwrite: bool) -> None:
    """Refuse a file output that would replace a folder, or an existing file unless ``overwrite``."""
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")


@contextlib.contextmanager
def staged_dir(path: str | Path, marker: str) -> Iterator[Path]:
    """A fresh folder beside ``path`` to write a whole output in; on success it replaces ``path``, on failure it is removed.

    ``marker`` is a file every complete output of this kind holds (``model.json`` of a
    checkpoint): an existing non-empty ``path`` without it is refused rather than replaced,
    so a mistyped ``--out`` never deletes an unrelated folder.
    """
    target = Path(path)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file())):
        raise OutputExistsError(
            f"{target} exists and is not an earlier output of this command (no {marker}); choose another path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    try:
        yield staging
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind this process as an error would (exit code 128 + 15), instead of ending it on the spot.

    The ``finally`` blocks and context managers then run: staged output and temporary
    folders (a shard cache can be gigabytes) are removed, as after Ctrl-C. torchrun stops
    the ranks of a failed job, and schedulers stop jobs, with SIGTERM.
    """

    def stop(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
