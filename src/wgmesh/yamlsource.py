"""YAML files that remember where each value came from.

ruamel.yaml's round-trip loader keeps line and column for every key and list item, which is
what lets an error point at the exact place in a pull request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from wgmesh.errors import InputError, Problem, did_you_mean


class YamlSource:
    """One YAML file being validated; collects problems instead of stopping at the first."""

    def __init__(self, path: str | Path, display: str | None = None):
        self.path = Path(path)
        self.name = display or str(path)
        self.problems: list[Problem] = []
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            problem = Problem(self.name, 0, 0, "", f"cannot read: {exc.strerror}")
            raise InputError([problem]) from exc
        try:
            self.data = YAML(typ="rt").load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            raise InputError(
                [Problem(self.name, line, col, "", f"not valid YAML: {exc.problem or exc}")]
            ) from exc

    @staticmethod
    def position(parent: Any, key: Any) -> tuple[int, int]:
        """1-based (line, column) of ``parent[key]``'s key, or of the parent if unknown."""
        try:
            if isinstance(parent, CommentedMap):
                line, col = parent.lc.key(key)
            elif isinstance(parent, CommentedSeq):
                line, col = parent.lc.item(key)
            else:
                return (0, 0)
        except (KeyError, IndexError, TypeError):
            line, col = getattr(parent.lc, "line", -1), getattr(parent.lc, "col", -1)
        return (line + 1, col + 1)

    def error(self, parent: Any, key: Any, path: str, message: str, fix: str = "") -> None:
        line, col = self.position(parent, key) if key is not None else self.node_position(parent)
        self.problems.append(Problem(self.name, line, col, path, message, fix))

    @staticmethod
    def node_position(node: Any) -> tuple[int, int]:
        lc = getattr(node, "lc", None)
        if lc is None or lc.line is None:
            return (0, 0)
        return (lc.line + 1, lc.col + 1)

    def mapping(
        self,
        parent: Any,
        key: Any,
        path: str,
        *,
        allowed: set[str],
        required: set[str] = frozenset(),
    ) -> dict[str, Any] | None:
        """``parent[key]`` as a mapping with only known keys, or None after reporting why."""
        node = parent[key] if key is not None else parent
        if not isinstance(node, dict):
            self.error(parent, key, path, f"must be a mapping, not {type_name(node)}")
            return None
        for name in node:
            if name not in allowed:
                self.error(node, name, join(path, name), f'unknown key "{name}"',
                           did_you_mean(str(name), allowed))
        for name in sorted(required - set(node)):
            self.error(parent, key, path, f'missing required key "{name}"')
        return node

    def check(self) -> None:
        """Raise every problem collected so far."""
        if self.problems:
            raise InputError(self.problems)


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    return f'"{value}"' if isinstance(value, str) else type(value).__name__
