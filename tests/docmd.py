"""The commands the README and docs/ show, read from the files themselves: every ```sh block,
a command a line (a trailing backslash continues it), with the exit code its comment claims
(`# exit 1: ...`; 0 when it claims none). tests/unit/test_docs.py and the lab tests that
run a block take them from here, so a changed example is the example that runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A line that would run something, wherever it appears in a code block (outside ```sh, it
# is a command hidden from the tests).
COMMAND = re.compile(r"(\$ )?([\w./~-]*/)?(wgmesh|ansible[\w-]*|\./dev\.sh|git|pip|python3|sh|"
                     r"echo|cd|export|sha256sum|dot|sudo|apt-get|nft|wg|wg-quick|ip|"
                     r"systemctl|journalctl|promtool|PATH=\S+)(\s|$)")
COMMENT = re.compile(r"\s+#(\s.*)?$|^#.*$")


@dataclass(frozen=True)
class Command:
    doc: str  # path relative to the repository
    line: int
    text: str  # as a reader types it, continuation lines joined as written
    exit: int  # what its comment claims

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence
    lang: str  # "" for an indented block
    lines: tuple[str, ...]

    @property
    def commands(self) -> list[Command]:
        out, pending, start = [], [], 0
        for n, raw in enumerate(self.lines, self.line + 1):
            if not pending and not raw.strip():
                continue
            if not pending:
                start = n
            pending.append(raw)
            if raw.endswith("\\"):
                continue
            text = "\n".join(pending)
            pending = []
            comment = COMMENT.search(text.splitlines()[-1])
            said = (comment.group(0) if comment else "")
            if comment:
                text = text[:len(text) - len(said)].rstrip()
            if not text.strip():
                continue
            claim = re.match(r"\s*# exit (\d+)\b", said)
            out.append(Command(self.doc, start, text, int(claim.group(1)) if claim else 0))
        return out

    @property
    def key(self) -> str:
        """The block's name in the tests' tables: its file and first command."""
        return f"{self.doc}: {self.commands[0].text.splitlines()[0]}"


def blocks(path: Path) -> list[Block]:
    """Fenced blocks, and indented ones (after a blank line, not a list item's text)."""
    doc = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append(Block(doc, i + 1, line[3:].strip(), tuple(lines[i + 1:j])))
            i = j + 1
            continue
        above = next((x for x in reversed(lines[:i]) if x.strip()), "")
        if (line.startswith("    ") and i and not lines[i - 1].strip()
                and not re.match(r"\s*([-*]|\d+\.) |  \S", above)):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or (not lines[j].strip()
                                      and j + 1 < len(lines) and lines[j + 1].startswith("    "))):
                j += 1
            out.append(Block(doc, i, "", tuple(x[4:] for x in lines[i:j])))
            i = j
            continue
        i += 1
    return out


def shell_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path) if b.lang == "sh"]


def block(key: str) -> Block:
    [found] = [b for b in shell_blocks() if b.key == key]
    return found
