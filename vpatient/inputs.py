"""Reading a user's text file (a JSON plan or record, a JSON or YAML config) without surprises.

Every JSON or YAML file a user hands vpatient is read here, so that the things a parser
does badly on hostile input are handled in one place: a size limit (a 64 MB plan must
fail at once, not hang), the encoding (UTF-8, with or without a byte-order mark; UTF-16
and other encodings are refused with a hint), nesting depth (Python's JSON parser
recurses), numbers Python refuses to convert (over 4,300 digits) and the non-standard
``NaN``/``Infinity`` literals. Each failure is a :class:`~vpatient.errors.DataFormatError`
naming the file.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any

from vpatient.errors import DataFormatError

__all__ = [
    "DEFAULT_MAX_INPUT_MB",
    "MAX_INPUT_MB_ENV",
    "MAX_NESTING",
    "check_shape",
    "max_input_bytes",
    "parse_json_text",
    "read_json_file",
    "read_text_file",
]

#: Environment variable that raises (or lowers) the size limit on JSON and YAML inputs, in MB.
MAX_INPUT_MB_ENV = "VPATIENT_MAX_JSON_MB"
#: Size limit on JSON and YAML inputs when the environment does not set one. Plans, configs and a
#: few records are far smaller; many patients belong in a MEDS directory.
DEFAULT_MAX_INPUT_MB = 32.0
#: Deepest nesting of lists and objects accepted; real plans, records and configs nest 4 levels.
MAX_NESTING = 64

_UTF16_32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def max_input_bytes() -> int:
    """The size limit on JSON and YAML inputs, in bytes: ``VPATIENT_MAX_JSON_MB`` or the default."""
    raw = os.environ.get(MAX_INPUT_MB_ENV)
    if raw is None:
        return int(DEFAULT_MAX_INPUT_MB * 1e6)
    try:
        megabytes = float(raw)
    except ValueError:
        raise DataFormatError(f"{MAX_INPUT_MB_ENV}={raw!r} is not a number of megabytes") from None
    if not megabytes > 0:
        raise DataFormatError(f"{MAX_INPUT_MB_ENV}={raw!r} must be a positive number of megabytes")
    return int(megabytes * 1e6)


def read_text_file(path: str | Path, what: str, max_bytes: int | None = None) -> str:
    """The text of ``path`` (a ``what``, e.g. "treatment plan"), checked for size and encoding.

    ``max_bytes`` None uses :func:`max_input_bytes`. A UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    limit = max_input_bytes() if max_bytes is None else max_bytes
    try:
        size = path.stat().st_size
        if size > limit:
            raise DataFormatError(
                f"{path}: {what} file is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit for JSON and YAML inputs "
                f"(set {MAX_INPUT_MB_ENV}=N to change it; many patients belong in a MEDS directory)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read {what} file ({exc.strerror or exc})") from None
    if data.startswith(_UTF16_32_BOMS):
        raise DataFormatError(f"{path}: {what} file is UTF-16 or UTF-32 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}: {what} file is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None


def read_json_file(path: str | Path, what: str, max_bytes: int | None = None) -> Any:
    """The parsed JSON of ``path`` (a ``what``), or a DataFormatError naming the file and what is wrong."""
    return parse_json_text(read_text_file(path, what, max_bytes), f"{path}: {what} file")


def parse_json_text(text: str, source: str) -> Any:
    """Parse JSON ``text`` from ``source`` (said first in every error): standard JSON, nested at most MAX_NESTING."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise DataFormatError(f"{source} nests lists or objects too deeply (at most {MAX_NESTING} levels)") from None
    except ValueError as exc:  # json's own refusals: an integer of over 4,300 digits, a NaN literal
        raise DataFormatError(f"{source} is not usable JSON: {exc}") from None
    return check_shape(data, source, len(text))


def check_shape(data: Any, source: str, max_items: int) -> Any:
    """``data`` (parsed JSON or YAML) when it nests at most MAX_NESTING levels and holds at most ``max_items`` values.

    Walked without recursion, since the point is to survive hostile input. A JSON text
    cannot hold more values than it has characters; a YAML text can, through aliases
    (a "billion laughs" document), which is what ``max_items`` stops.
    """
    items = 0
    stack = [(data, 1)]
    while stack:
        item, level = stack.pop()
        items += 1
        if items > max_items:
            raise DataFormatError(f"{source} expands to more than {max_items:,} values (YAML aliases?)")
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if level > MAX_NESTING:
                raise DataFormatError(f"{source} nests lists or objects too deeply (at most {MAX_NESTING} levels)")
            stack.extend((child, level + 1) for child in item)
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON; write null or a finite number")
