"""The policy's value syntax: protocol names and numbers, port ranges, host:port, durations,
and the JSON paths problems are reported at. Other stages (eval queries, the policy's own
tests) read values with the same rules."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from wgmesh import grammar

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "fc": 133,
}
DEFAULT_PROTOS = frozenset({6, 17, 1, 58})  # no proto: TCP, UDP, ICMP, ICMPv6
PORT_PROTOS = frozenset({6, 17, 132})
ALL_PORTS = ((0, 65535),)
ICMP = frozenset({1, 58})

TOP_KEYS = {"groups", "hosts", "ipsets", "tagOwners", "acls", "grants", "autoApprovers", "ssh",
            "tests", "sshTests", "nodeAttrs", "randomizeClientPort"}
AUTOGROUPS_SRC = {"autogroup:member", "autogroup:tagged", "autogroup:danger-all"}
AUTOGROUPS_DST = {"autogroup:member", "autogroup:tagged", "autogroup:self", "autogroup:internet"}
UNSUPPORTED_AUTOGROUPS = {"autogroup:admin", "autogroup:owner", "autogroup:it-admin",
                          "autogroup:network-admin", "autogroup:billing-admin",
                          "autogroup:auditor", "autogroup:shared"}
DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_ports(text: str) -> tuple[tuple[int, int], ...] | str:
    """'*', '22', '80-443', '22,80,8000-8100' -> ranges, or an error message."""
    if text == "*":
        return ALL_PORTS
    out = []
    for part in text.split(","):
        lo_s, _, hi_s = part.partition("-")
        if not grammar.matches(grammar.DIGITS, lo_s):
            return f'port range "{part}": invalid first integer'
        if _ and not grammar.matches(grammar.DIGITS, hi_s):
            return f'port range "{part}": invalid last integer'
        lo, hi = int(lo_s), int(hi_s or lo_s)
        if lo == 0:
            return f"port range \"{part}\": first port must be >0, or use '*' for wildcard"
        if hi > 65535 or lo > 65535:
            return f'port range "{part}": port must be at most 65535'
        if hi < lo:
            return f'port range "{part}": last port is below the first'
        out.append((lo, hi))
    return tuple(sorted(out))


def parse_proto(value: Any) -> int | str:
    """An IANA protocol name or number -> number, or an error message."""
    if not isinstance(value, str):
        return "proto must be a protocol name or number as text"
    v = value.lower()
    if v in PROTOCOLS:
        return PROTOCOLS[v]
    if grammar.matches(grammar.DIGITS, v):
        if len(v) > 1 and v.startswith("0"):
            return f'leading 0 not permitted in protocol number "{value}"'
        if v == "0":  # Tailscale refuses it: 0 stands for "no protocol given"
            return 'proto "0" is not a protocol; leave proto out for TCP, UDP and ICMP'
        if int(v) <= 255:
            return int(v)
    return f'proto name "{value}" not known; use tcp, udp, icmp, ipv6-icmp, sctp, ... or 1-255'


def split_hostport(text: str) -> tuple[str, str] | None:
    """'selector:ports' split on the last colon; '[v6]:ports' also accepted (brackets only
    around an IPv6 address, as Tailscale's parser has them)."""
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](/[0-9]+)?:(.+)", text)
        if not m or grammar.ip_address(m.group(1), 6) is None:
            return None
        return m.group(1) + (m.group(2) or ""), m.group(3)
    sel, colon, ports = text.rpartition(":")
    return (sel, ports) if colon and sel else None


def json_path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if re.fullmatch(r"\w+", p)
                                                     else f'["{p}"]')
    return out.lstrip(".")
