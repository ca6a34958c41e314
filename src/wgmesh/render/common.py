"""What every renderer shares: a value reaches a rendered file only whole and only as the
grammar allows."""

from __future__ import annotations

import re

from wgmesh import grammar

# What one value in a rendered file may be made of: names, addresses, prefixes, endpoints,
# keys. No space, quote, '#', ';', '$', brace or control character, so no value can end a
# line, start a comment, leave a quoted string or add a command, whatever passed the loaders.
_TOKEN = re.compile(r"[A-Za-z0-9._:/\[\]+=@-]+", re.ASCII)


class RenderError(ValueError):
    """A value that must never reach a rendered file (the loaders should have refused it)."""


def clean(*values: object) -> None:
    """Refuse to render anything but plain tokens (defence in depth behind the grammar)."""
    for value in values:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise RenderError(f"refusing to render the value {value!r}")


def clean_key(key: str) -> None:
    if not grammar.public_key(key):
        raise RenderError(f"refusing to render {key!r} as a public key")
