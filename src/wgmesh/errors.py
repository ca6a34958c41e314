"""Error reporting shared by every loader: each problem names the file, the place and a fix.

Loaders collect every problem they find and raise them together, so a pull request shows all
of its mistakes at once rather than one per CI run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


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
        return f"{text} ({self.fix})" if self.fix else text


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
