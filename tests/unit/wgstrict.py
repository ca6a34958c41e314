"""A strict reader of the wg-quick files wgmesh renders, written apart from the renderer so
the tests do not trust it: exactly one [Interface], first; only the keys wgmesh writes; only
the hooks wgmesh writes, to the letter; keys, addresses and endpoints that parse whole."""

from __future__ import annotations

import base64
import ipaddress
import re

KEY = re.compile(r"[A-Za-z0-9+/]{43}=")
NAME = r"[A-Za-z0-9_.-]+"
NET = r"[0-9a-f:.]+/[0-9]+"
HOOKS = [
    re.compile(rf"wg set %i private-key /etc/wireguard/{NAME}\.key"),
    re.compile(rf"ip -(?P<v>[46]) rule del to (?P<n>{NET}) lookup main priority 1000 "
               rf"2>/dev/null \|\| true; ip -(?P=v) rule add to (?P=n) lookup main "
               r"priority 1000"),
    re.compile(rf"ip -[46] rule del to {NET} lookup main priority 1000 \|\| true"),
    re.compile(re.escape('wg show %i persistent-keepalive | while read -r peer every; do '
                         '[ "$every" = off ] || { wg set %i peer "$peer" persistent-keepalive 0; '
                         'wg set %i peer "$peer" persistent-keepalive "$every"; }; done')),
]
# The one PreUp, in every file of a managed host: its table loads before the interface
# exists, or the interface stays down.
FILTER_HOOK = ('nft -f /etc/wgmesh/nftables.nft || { echo "wgmesh: %i stays down: its filter '
               '/etc/wgmesh/nftables.nft did not load" >&2; exit 1; }')
INTERFACE_KEYS = {"Address", "ListenPort", "MTU", "PreUp", "PostUp", "PreDown"}
# A device's configuration (WireGuard apps): its key inline, no hook, no listening port.
DEVICE_KEYS = {"PrivateKey", "Address", "MTU"}
PEER_KEYS = {"PublicKey", "AllowedIPs", "Endpoint", "PersistentKeepalive"}
REPEATABLE = {"PostUp", "PreDown"}


class Invalid(AssertionError):
    pass


def parse(text: str, device: bool = False) -> dict:
    """{"interface": {key: [values]}, "peers": [{key: [values]}]}, or Invalid. ``device``:
    the configuration of a device wgmesh does not manage."""
    if not re.fullmatch(r"[\x20-\x7e\n]*", text):
        raise Invalid("a character other than printable ASCII and newlines")
    sections: list[tuple[str, dict]] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        if line in ("[Interface]", "[Peer]"):
            sections.append((line, {}))
            continue
        m = re.fullmatch(r"([A-Za-z]+) = (.+)", line)
        if not m or not sections:
            raise Invalid(f"line {n}: {line!r}")
        kind, values = sections[-1]
        key, value = m.groups()
        allowed = (DEVICE_KEYS if device else INTERFACE_KEYS) if kind == "[Interface]" \
            else PEER_KEYS
        if key not in allowed:
            raise Invalid(f"line {n}: {key} in {kind}")
        if key in values and key not in REPEATABLE:
            raise Invalid(f"line {n}: {key} twice in one section")
        values.setdefault(key, []).append(value)
        _check(key, value, n)
    kinds = [k for k, _ in sections]
    if kinds[:1] != ["[Interface]"] or kinds.count("[Interface]") != 1:
        raise Invalid(f"sections {kinds}: exactly one [Interface], first")
    if not device and sections[0][1].get("PreUp") != [FILTER_HOOK]:
        raise Invalid("the interface does not load its filter first (PreUp)")
    return {"interface": sections[0][1], "peers": [v for _, v in sections[1:]]}


def _check(key: str, value: str, n: int) -> None:
    if key == "PreUp":
        if value != FILTER_HOOK:
            raise Invalid(f"line {n}: a hook wgmesh does not write: {value!r}")
    elif key in ("PostUp", "PreDown"):
        if not any(h.fullmatch(value) for h in HOOKS):
            raise Invalid(f"line {n}: a hook wgmesh does not write: {value!r}")
    elif key in ("PublicKey", "PrivateKey"):
        if not KEY.fullmatch(value) or len(base64.b64decode(value)) != 32:
            raise Invalid(f"line {n}: not a public key: {value!r}")
    elif key == "AllowedIPs":
        for part in value.split(", "):
            _network(part, n, strict=True)
    elif key == "Address":
        for part in value.split(", "):
            _network(part, n, strict=False)
    elif key == "Endpoint":
        m = re.fullmatch(r"\[([0-9a-f:.]+)\]:([0-9]+)|([A-Za-z0-9.-]+):([0-9]+)", value)
        if not m or not 0 < int(m.group(2) or m.group(4)) < 65536:
            raise Invalid(f"line {n}: not an endpoint: {value!r}")
        if m.group(1):
            ipaddress.IPv6Address(m.group(1))
    elif not re.fullmatch(r"[0-9]{1,5}", value):
        raise Invalid(f"line {n}: {key} is not a number: {value!r}")


def _network(text: str, n: int, strict: bool) -> None:
    if not re.fullmatch(NET, text):
        raise Invalid(f"line {n}: not a prefix: {text!r}")
    try:
        ipaddress.ip_network(text, strict=strict)
    except ValueError as exc:
        raise Invalid(f"line {n}: {exc}") from exc
