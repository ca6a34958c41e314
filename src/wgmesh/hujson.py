"""HuJSON (JSON with comments and trailing commas, Tailscale's policy format) with positions.

json5 and friends accept far more than HuJSON (single quotes, bare keys) and forget where a
value came from; policy errors must name the line and column, so this small parser records
the position of every value by its JSON path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from wgmesh import limits
from wgmesh.errors import InputError, Problem

Path = tuple[str | int, ...]

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')


class Document:
    """A parsed HuJSON file: ``value`` plus ``where(path)`` -> (line, column), 1-based."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.positions: dict[Path, int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.value = _Parser(self).parse()

    def where(self, path: Path) -> tuple[int, int]:
        """Line and column of the value (or key) at ``path``, or of its nearest parent."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.line_col(self.positions.get(path, 0))

    def line_col(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - self._line_starts[lo] + 1


def loads(text: str, name: str = "<policy>") -> Document:
    return Document(name, text)


class _Parser:
    def __init__(self, doc: Document):
        self.doc = doc
        self.text = doc.text
        self.pos = 0

    def fail(self, message: str, at: int | None = None):
        line, col = self.doc.line_col(self.pos if at is None else at)
        raise InputError([Problem(self.doc.name, line, col, "", f"not valid HuJSON: {message}")])

    def skip(self) -> None:
        """Whitespace and comments."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t\r\n\ufeff":
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    self.fail("comment is never closed")
                self.pos = end + 2
            else:
                return

    def parse(self) -> Any:
        self.skip()
        value = self.value(())
        self.skip()
        if self.pos != len(self.text):
            self.fail("unexpected text after the end of the document")
        return value

    def value(self, path: Path) -> Any:
        self.skip()
        if len(path) > limits.MAX_DEPTH:
            self.fail(f"nested more than {limits.MAX_DEPTH} levels deep")
        self.doc.positions.setdefault(path, self.pos)
        if self.pos >= len(self.text):
            self.fail("unexpected end of file")
        c = self.text[self.pos]
        if c == "{":
            return self.obj(path)
        if c == "[":
            return self.array(path)
        if c == '"':
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return val
        m = _NUMBER.match(self.text, self.pos)
        if m and len(m.group()) > limits.MAX_NUMBER_CHARS:
            self.fail(f"a number of more than {limits.MAX_NUMBER_CHARS} characters")
        if m:
            self.pos = m.end()
            return json.loads(m.group())
        self.fail(f"unexpected character {c!r}")
        return None  # not reached

    def string(self) -> str:
        m = _STRING.match(self.text, self.pos)
        if not m:
            self.fail("bad string (unescaped control character or bad escape?)")
        self.pos = m.end()
        return json.loads(m.group())

    def obj(self, path: Path) -> dict[str, Any]:
        self.pos += 1
        out: dict[str, Any] = {}
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return out
            if not self.text.startswith('"', self.pos):
                self.fail("expected a quoted key or '}'")
            key_at = self.pos
            key = self.string()
            if key in out:
                self.fail(f'duplicate key "{key}"', key_at)
            self.doc.positions[(*path, key)] = key_at
            self.skip()
            if not self.text.startswith(":", self.pos):
                self.fail("expected ':' after the key")
            self.pos += 1
            out[key] = self.value((*path, key))
            if not self.comma("}"):
                return out

    def array(self, path: Path) -> list[Any]:
        self.pos += 1
        out: list[Any] = []
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return out
            out.append(self.value((*path, len(out))))
            if not self.comma("]"):
                return out

    def comma(self, close: str) -> bool:
        """After an item: True to read another, False once the container closed."""
        self.skip()
        if self.text.startswith(",", self.pos):
            self.pos += 1
            return True
        if self.text.startswith(close, self.pos):
            self.pos += 1
            return False
        self.fail(f"expected ',' or '{close}'")
        return False
