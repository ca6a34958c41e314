"""YAML files that remember where each value came from.

ruamel.yaml's round-trip loader keeps line and column for every key and list item, which is
what lets an error point at the exact place in a pull request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent

from wgmesh import grammar, limits
from wgmesh.errors import InputError, Problem, did_you_mean, read_text
from wgmesh.grammar import IPAddr


def load_yaml(path: Path, name: str) -> Any:
    """Parse a YAML file round-trip (positions kept), within the limits of wgmesh.limits.

    An alias bomb is cheap to load (its aliases are shared references) and explodes only when
    something expands it, so the loaded tree is walked once, each container visited once, to
    count the containers reached again through aliases and the depth; nothing deeper than the
    parser's own recursion can be built at all.
    """
    text = read_text(path, name, limits.MAX_FILE_BYTES)
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise InputError(
            [Problem(name, line, col, "", f"not valid YAML: {exc.problem or exc}")]) from exc
    except RecursionError as exc:
        line, col = _too_deep_at(text)
        raise InputError([Problem(name, line, col, "", f"nested more than {limits.MAX_DEPTH} "
                                  "levels deep", "see the limits in docs/security.md")]) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        # The constructor's own failures (a date that does not exist, a number too long
        # to convert) come without a position.
        raise InputError([Problem(name, 0, 0, "", f"not valid YAML: {exc}")]) from exc
    _check_shape(data, name)
    return data


# libyaml's loader where PyYAML was built with it; else PyYAML's own, in pure Python (the
# same results, more slowly).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _FastLoader(_SAFE_LOADER):
    """libyaml with the scalar types of ruamel's round-trip loader (YAML 1.2 booleans, ints
    and floats, plus timestamps), and duplicate keys refused, so both read a file alike."""

    yaml_implicit_resolvers: ClassVar[dict] = {}

    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)
                and k.tag != "tag:yaml.org,2002:merge"]
        if len(keys) != len(set(keys)):
            raise yaml.constructor.ConstructorError(None, None, "duplicate key",
                                                    node.start_mark)
        return super().construct_mapping(node, deep)


def _resolver(tag: str, pattern: str, first: str) -> None:
    _FastLoader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


_resolver("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_resolver("tag:yaml.org,2002:int", r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$",
          "-+0123456789")
_resolver("tag:yaml.org,2002:float", r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)
          (?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", "-+0123456789.")
_resolver("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])
_resolver("tag:yaml.org,2002:timestamp", r"""^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}
          |[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}
          (?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)$""", "0123456789")
_FastLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _int(loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    base = {"0b": 2, "0o": 8, "0x": 16}.get(text[:2], 10)
    return sign * int(text[2:] if base != 10 else text, base)


_FastLoader.add_constructor("tag:yaml.org,2002:int", _int)
_FastLoader.add_constructor("tag:yaml.org,2002:bool",
                            lambda loader, node: loader.construct_scalar(node).lower() == "true")
def _float(loader, node) -> float:
    text = loader.construct_scalar(node).replace("_", "").lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


_FastLoader.add_constructor("tag:yaml.org,2002:float", _float)


def load_yaml_fast(path: Path, name: str) -> Any:
    """The fast read path: libyaml, the same limits. Anything it cannot read cleanly is read
    again by ``load_yaml``, whose errors carry ruamel's words and positions."""
    text = read_text(path, name, limits.MAX_FILE_BYTES)
    try:
        data = yaml.load(text, Loader=_FastLoader)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        return load_yaml(path, name)
    _check_shape(data, name)
    return data


def _too_deep_at(text: str) -> tuple[int, int]:
    """Where nesting first passes the limit: the event parser does not recurse, so it can
    read what the constructor could not build."""
    depth = 0
    for event in YAML(typ="rt").parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > limits.MAX_DEPTH:
                return event.start_mark.line + 1, event.start_mark.column + 1
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
    return 0, 0


def _check_shape(data: Any, name: str) -> None:
    seen: set[int] = set()
    aliases = 0
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if id(node) in seen:
            aliases += 1
            if aliases > limits.MAX_ALIASES:
                raise _limit(name, node, f"more than {limits.MAX_ALIASES} aliases")
            continue
        seen.add(id(node))
        if depth > limits.MAX_DEPTH:
            raise _limit(name, node, f"nested more than {limits.MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _limit(name: str, node: Any, message: str) -> InputError:
    line, col = YamlSource.node_position(node) if node is not None else (0, 0)
    return InputError([Problem(name, line, col, "", message, "see the limits in docs/security.md")])


class YamlSource:
    """One YAML file being validated; collects problems instead of stopping at the first.

    With ``fast``, the file is read by libyaml (positions are not kept, so problems are
    reported without them): callers that find a problem load it again without ``fast``.
    """

    def __init__(self, path: str | Path, display: str | None = None, *, fast: bool = False):
        self.path = Path(path)
        self.name = display or str(path)
        self.problems: list[Problem] = []
        self.data = load_yaml_fast(self.path, self.name) if fast else load_yaml(self.path,
                                                                                 self.name)

    @classmethod
    def of(cls, path: Path, data: Any) -> YamlSource:
        """A source for data read by other means (positions unknown)."""
        src = cls.__new__(cls)
        src.path, src.name, src.problems, src.data = Path(path), str(path), [], data
        return src

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
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 80 else f'"{value[:80]}..."'
    return type(value).__name__


class Fields:
    """The fields of one mapping of a YamlSource, each read and checked whole: a wrong value
    is a problem at its own line and column (``path.key``), and ``ok`` turns False. Every
    reader returns None (or the default) for a missing or wrong value, so a caller reads on
    and every problem of a file is reported in one run."""

    def __init__(self, src: YamlSource, node: Any, path: str):
        self.src, self.node, self.path = src, node, path
        self.ok = True

    def bad(self, key: Any, message: str, fix: str = "") -> None:
        self.ok = False
        self.src.error(self.node, key, join(self.path, key), message, fix)

    def text(self, key: str, pattern: re.Pattern | None = None, what: str = "",
             fix: str = "") -> str | None:
        """An optional text value, matched whole against ``pattern``."""
        v = self.node.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            self.bad(key, f"must be text, not {type_name(v)}")
            return None
        if pattern is not None and not grammar.matches(pattern, v):
            self.bad(key, f"{type_name(v)} is not {what}", fix)
            return None
        return v

    def flag(self, key: str, default: bool = False) -> bool:
        v = self.node.get(key, default)
        if not isinstance(v, bool):
            self.bad(key, f"must be true or false, not {type_name(v)}")
            return default
        return v

    def date(self, key: str, message: str, fix: str = "", *,
             times: bool = False) -> dt.date | None:
        """A date as YAML gives it (a date, or its YYYY-MM-DD text; with ``times``, a
        timestamp's day too), or None when missing; ``message`` follows a wrong value."""
        if key not in self.node:
            return None
        day = yaml_date(self.node[key], times=times)
        if day is None:
            self.bad(key, f"{type_name(self.node[key])} {message}", fix)
        return day

    def address(self, key: str, family: int, fix: str = "") -> IPAddr | None:
        """An optional IP address of ``family`` (an empty value is a wrong one)."""
        if key not in self.node:
            return None
        addr = grammar.ip_address(self.node[key], family)
        if addr is None:
            self.bad(key, f"{type_name(self.node[key])} is not an IPv{family} address", fix)
        return addr

    def choice(self, key: str, options: Iterable[str], default: str, what: str) -> str:
        """One of ``options`` (``default`` when missing or wrong)."""
        v = self.node.get(key, default)
        if v not in options:
            self.bad(key, f'unknown {what} "{v}"', "expected one of: " + ", ".join(options))
            return default
        return v


def yaml_date(value: Any, *, times: bool = False) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date() if times else None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and grammar.matches(grammar.DATE, value):
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value)
    return None
