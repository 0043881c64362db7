"""Exceptions raised by vpatient.

Each also inherits the built-in a caller would naturally catch (``ValueError``,
``FileNotFoundError``), so code that does not know vpatient still handles them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar


class VPatientError(Exception):
    """Base class of every error vpatient raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) with an input, located precisely.

    ``subject_id`` is None for problems that belong to a whole file, config or plan;
    ``owner`` then says which (``plan 'double dose'``). ``field`` is a dotted path
    such as ``observations[3].value``.
    """

    subject_id: str | None
    field: str
    value: Any
    message: str
    severity: Literal["error", "warning"] = "error"
    owner: str | None = None

    def __str__(self) -> str:
        who = f"subject {self.subject_id}" if self.subject_id is not None else (self.owner or "input")
        shown = _short_repr(self.value)
        return f"{who}: {self.field} = {shown}: {self.message}"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordValidationError(VPatientError, ValueError):
    """Input records (or a plan, or a config) failed validation.

    ``problems`` holds every problem found, not only the first, so a user can fix a
    file in one pass.
    """

    def __init__(self, problems: Sequence[Problem], header: str = "invalid input"):
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        lines = [f"{header}: {len(errors)} error(s)"]
        lines += [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        super().__init__("\n".join(lines))


class ConfigError(VPatientError, ValueError):
    """A dataset config is inconsistent or cannot be read."""


class DataFormatError(VPatientError, ValueError):
    """An input file is not in the expected format (missing columns, wrong types)."""


class DatasetNotFoundError(VPatientError, FileNotFoundError):
    """A dataset name or path that does not exist."""


class OutputExistsError(VPatientError, FileExistsError):
    """An output directory already holds files and overwriting was not asked for."""


class CheckpointError(VPatientError, ValueError):
    """A checkpoint directory that is incomplete, corrupted, or not safe to load."""


class OptionError(VPatientError, ValueError):
    """An option given a value outside its choices (a misspelt scale, update rule, target kind, ...)."""


Choice = TypeVar("Choice", bound=StrEnum)


def choose(options: type[Choice], value: str, name: str) -> Choice:
    """``value`` as a member of ``options``; an OptionError listing the choices when it is none of them.

    A StrEnum member's value is its plain string, so callers may pass either.
    """
    try:
        return options(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in options)
        raise OptionError(f"unknown {name} {value!r}; choose one of {allowed}") from None


class UnknownCodeWarning(UserWarning):
    """Input codes that no variable of the config reads, where the config says to warn."""
