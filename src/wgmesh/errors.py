"""Error reporting shared by every loader: each problem names the file, the place and a fix.

Loaders collect every problem they find and raise them together, so a pull request shows all
of its mistakes at once rather than one per CI run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    write_atomic as write_file,
)

# Characters that could end a line or steer a terminal: an error names the offending value,
# and a value must not be able to forge further lines in a CI log.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
MAX_SHOWN = 2000


def escape(text: str) -> str:
    """Text safe to print on one line: control characters escaped, very long text cut."""
    text = _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...(cut)"


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an input file.

    ``line`` and ``column`` are 1-based; 0 when the place has no position (a missing key is
    reported at its parent). ``path`` is the dotted path of the offending value.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        at = f" {self.path}:" if self.path else ""
        text = f"{where}:{at} {self.message}"
        return escape(f"{text} ({self.fix})" if self.fix else text)


class LabError(Exception):
    """The lab could not be brought into the requested state."""


class InputError(Exception):
    """Raised with every problem found in one or more input files."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelt key, or a list of the valid ones."""
    choices = sorted(choices)
    if not choices:
        return "none are defined"
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f'did you mean "{close[0]}"?'
    return "expected one of: " + ", ".join(choices)


def read_text(path: Path, name: str, max_bytes: int) -> str:
    """A file's text: UTF-8, at most ``max_bytes``; every failure is an InputError."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError([Problem(name, 0, 0, "", f"the file has {size} bytes, more than "
                                      f"the limit of {max_bytes}", "see docs/security.md")])
        data = path.read_bytes()
    except OSError as exc:
        raise InputError([Problem(name, 0, 0, "", f"cannot read: {exc.strerror}")]) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError([Problem(name, line, col, "", "not UTF-8 text",
                                  "save the file as UTF-8")]) from exc


def write_atomic(path: Path, data: str | bytes, mode: int | None) -> None:
    """Write beside the file and rename over it, so a reader sees the old or the new one.
    ``mode``: the new file's (set before the rename: a secret is never readable by others);
    None keeps the old file's (0644 for a new one). The hosts' rule, in one copy."""
    write_file(path, data, mode)
