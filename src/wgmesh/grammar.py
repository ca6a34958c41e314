"""One strict grammar for every value that can reach a rendered file or a command line.

Every loader (mesh.yml, the lockfile, the policy, a key a host reports) checks its values
here, whole string against whole pattern: ``re.fullmatch`` with ASCII classes, never ``^...$``
(``$`` also matches before a trailing newline) and never ``\\d`` or ``str.isdigit`` (both take
digits of every script). The renderers check again before they write (see ``render.clean``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

# Linux's IFNAMSIZ is 16 with the terminating NUL; the project adds "-hop" to the mesh
# interface's name for the relay tunnel, so the mesh interface gets 15 - 4 characters.
IFNAME_MAX = 15
HOP_SUFFIX = "-hop"

NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# Tailscale logins are e-mail addresses or provider forms such as alice@github; Headscale
# writes a user with no domain as alice@ (its policies say "username must contain @").
USER = re.compile(r"[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)?",
                  re.ASCII)
TAG = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]{0,62}", re.ASCII)
GROUP = re.compile(r"group:[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
HOST_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
IPSET = re.compile(r"ipset:[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"(?:{LABEL}\.)*{LABEL}", re.ASCII)
# Host names in endpoints and ansible_host: DNS names, either case.
DNS_NAME = re.compile(r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)
IFNAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{IFNAME_MAX - len(HOP_SUFFIX)}}}", re.ASCII)
# A Curve25519 public key: base64 of exactly 32 bytes, so 43 characters and one '='; the
# last character carries 2 bits of key and 4 zero bits.
PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=", re.ASCII)
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
DIGITS = re.compile(r"[0-9]{1,10}", re.ASCII)
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", re.ASCII)
# Login names for ssh rules (POSIX portable user names).
LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", re.ASCII)
SSH_LOCALPART = re.compile(r"localpart:\*@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?",
                           re.ASCII)
_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}", re.ASCII)
_NETWORK_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}(?:/[0-9]{1,3})?", re.ASCII)
_PRINTABLE = re.compile(r"[\x20-\x7e]*", re.ASCII)


def matches(pattern: re.Pattern, value: object) -> bool:
    """True when ``value`` is text and all of it matches ``pattern``."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def printable(value: object) -> bool:
    """Text of printable ASCII only: no control character, no line break of any kind."""
    return isinstance(value, str) and _PRINTABLE.fullmatch(value) is not None


def public_key(value: object) -> bool:
    if not matches(PUBLIC_KEY, value):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def ip_address(value: object, version: int | None = None) -> IPAddr | None:
    """An IP address written plainly (no scope id, no brackets, ASCII), or None."""
    if not isinstance(value, str):
        return None
    addr = _parse_address(value)
    return addr if addr is not None and version in (None, addr.version) else None


@functools.lru_cache(maxsize=1 << 16)
def _parse_address(value: str) -> IPAddr | None:
    # Cached: the lockfile's addresses are checked when it is read and used when addresses
    # are allocated; parsing 10,000 of them twice is a tenth of a one-host render.
    if not _ADDRESS_CHARS.fullmatch(value):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_network(value: object, version: int | None = None, *,
               strict: bool = True) -> IPNet | None:
    """A prefix 'address/length' (or a bare address) written plainly, or None."""
    if not matches(_NETWORK_CHARS, value):
        return None
    try:
        net = ipaddress.ip_network(value, strict=strict)
    except ValueError:
        return None
    return net if version in (None, net.version) else None


def network_error(value: object, strict: bool = True) -> str:
    """Why ``ip_network`` refused a value, in words."""
    if not isinstance(value, str):
        return "not a network"
    if not matches(_NETWORK_CHARS, value):
        return "only digits, hex letters, ':', '.' and one '/length' may appear"
    try:
        ipaddress.ip_network(value, strict=strict)
    except ValueError as exc:
        return str(exc)
    return "not a network"


def port(value: object) -> int | None:
    """A port number 1-65535 (an integer, or ASCII digits), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and matches(DIGITS, value):
        value = int(value)
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


def endpoint(value: object) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' -> (host, port), or None. The host is an IPv4 or IPv6
    address or a DNS name; the port ASCII digits."""
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([A-Za-z0-9.-]+):([0-9]{1,5})",
                     value, re.ASCII)
    if not m:
        return None
    if m.group(1):
        host, number = m.group(1), m.group(2)
        if ip_address(host, 6) is None:
            return None
    else:
        host, number = m.group(3), m.group(4)
        if ip_address(host) is None and not matches(DNS_NAME, host):
            return None
    p = port(number)
    return (host, p) if p is not None else None


def host_address(value: object) -> bool:
    """What ansible_host may be: an IP address or a DNS name."""
    return ip_address(value) is not None or matches(DNS_NAME, value)


# What an endpoint's text may contain at all (checked before it is split).
ENDPOINT_TEXT = re.compile(r"[A-Za-z0-9.:\[\]-]{3,262}", re.ASCII)
