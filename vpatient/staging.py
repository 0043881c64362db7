"""Staging paths: where a writer builds its output beside the target before renaming it into place.

A staging folder (or file) is named ``.<target>.<pid>.<random>.tmp``, beside the target so the
final rename stays on one file system, with the id of the process writing it so a later
run can tell whether anyone still does. A writer killed outright (SIGKILL, power loss) leaves
its staging path behind; the next writer of the same target removes such stale ones first:
those whose process is gone, and those named without a process id (by older versions of
vpatient) once they are :data:`STALE_AFTER_SECONDS` old. Another target's staging paths are
never touched, even where its name starts with this one's (``cohort`` and ``cohort.v2``).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["STALE_AFTER_SECONDS", "remove_stale_staging", "staging_dir", "staging_file"]

log = logging.getLogger(__name__)

#: Age after which a staging path that names no process is taken as abandoned.
STALE_AFTER_SECONDS = 3600.0
_SUFFIX = ".tmp"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part
# <pid>.<random>.tmp, optionally followed by the target's own suffix (``.tmp.png``: plotting
# libraries choose the format by the last suffix of the path they are given)
_NAMED = re.compile(rf"(\d+)\.{_RANDOM}\.tmp(\.\w+)?")
_UNNAMED = re.compile(rf"{_RANDOM}\.tmp(\.\w+)?")  # from before process ids were recorded


def staging_dir(target: str | Path) -> Path:
    """A new, empty staging folder beside ``target``, after removing stale ones of the same target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    return Path(tempfile.mkdtemp(prefix=_prefix(target) + f"{os.getpid()}.", suffix=_SUFFIX, dir=target.parent))


def staging_file(target: str | Path, keep_suffix: bool = False) -> Path:
    """A new, empty staging file beside ``target`` (to be renamed over it), after removing stale ones of the same target.

    ``keep_suffix`` ends its name with the target's suffix too (``.tmp.png``), for writers
    that choose a format by it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    suffix = _SUFFIX + (target.suffix if keep_suffix else "")
    handle, name = tempfile.mkstemp(prefix=_prefix(target) + f"{os.getpid()}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    return Path(name)


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Remove the staging paths of ``target`` that no running writer owns; returns those removed."""
    target = Path(target)
    prefix = _prefix(target)
    removed = []
    for path in Path(target.parent).glob(glob.escape(prefix) + "*" + _SUFFIX + "*"):
        if not _abandoned(path, path.name[len(prefix) :]):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted writer of %s", path, target)
        removed.append(path)
    return removed


def _prefix(target: Path) -> str:
    return f".{target.name}."


def _abandoned(path: Path, rest: str) -> bool:
    """Whether the staging path ``path`` (``rest``: its name after the target's prefix) belongs to no running writer."""
    named = _NAMED.fullmatch(rest)
    if named:
        return not _running(int(named.group(1)))
    if not _UNNAMED.fullmatch(rest):  # not a staging path of this target
        return False
    try:  # named before process ids were recorded: judged by age
        return time.time() - path.lstat().st_mtime > STALE_AFTER_SECONDS
    except FileNotFoundError:
        return False


def _running(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. no signals on this platform: keep it
        return True
    return True
