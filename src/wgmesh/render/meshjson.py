"""The mesh as one JSON document (`render --json`, plan.json): every host's peers, names and
filter sets, written without building the whole document in memory."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, TextIO

from wgmesh.compile.hostoutput import HostOutput, Peer
from wgmesh.intervals import Box
from wgmesh.mesh import Network
from wgmesh.render.ruleset import SET_TYPES, element_lines


class _Raw(str):
    """JSON text already written, at the depth where it is used in the plan."""


# Depth of a host's peers, names and filter lists in the plan: plan > hosts > host > list.
_ITEM_DEPTH = 4


def host_json(host: HostOutput, net: Network) -> dict[str, Any]:
    """A host's part of the plan. Peers, names and set elements are shared between hosts,
    so their text is made once (as ``peer_block`` does for wg-quick)."""
    return {
        "name": host.name,
        "addresses": [str(host.ipv4), str(host.ipv6)],
        "listen_port": host.listen_port,
        "routes": host.routes,
        "exit_node": host.exit_node,
        "uses_exit_node": host.uses_exit_node,
        "management_networks": ([str(n) for n in net.management_networks]
                                if host.uses_exit_node else []),
        "forwarding": host.forwarding,
        "peers": [_peer_json(p) for p in host.peers],
        "filters": {key: _elements_json(key, host.sets[key], f)
                    for pattern in SET_TYPES for f in (4, 6)
                    if host.sets.get(key := pattern.format(f=f))},
        "names": [_name_json(entry) for entry in host.names],
    }


@functools.lru_cache(maxsize=1 << 16)
def _peer_json(p: Peer) -> _Raw:
    return _Raw(_json_text({
        "name": p.name, "public_key": p.public_key, "allowed_ips": p.allowed_ips,
        "endpoint": p.endpoint, "keepalive": p.keepalive, "connection": p.connection,
        "relay": p.relay, "roles": p.roles}, _ITEM_DEPTH))


@functools.lru_cache(maxsize=1 << 16)
def _name_json(entry: tuple[str, tuple[str, str]]) -> _Raw:
    return _Raw(_json_text({"address": entry[0], "names": entry[1]}, _ITEM_DEPTH))


def _elements_json(key: str, boxes: tuple[Box, ...], family: int) -> _Raw:
    pad, inner = "  " * _ITEM_DEPTH, "  " * (_ITEM_DEPTH + 1)
    lines = element_lines(key, boxes, family).replace("\n", f'",\n{inner}"')
    return _Raw(f'[\n{inner}"{lines}"\n{pad}]')


def write_plan(out: TextIO, hosts: Iterable[HostOutput], net: Network, expired: list[str],
               warnings: Callable[[], list[str]]) -> None:
    """The JSON plan, written host by host as ``hosts`` yields them, so memory holds one
    host's part at a time. The text is what ``json.dumps(plan, indent=2)`` would give.
    ``warnings`` is called after the last host: compiling hosts may add to them."""
    out.write("{\n" + _json_field("network", {
        "interface": net.interface, "listen_port": net.listen_port,
        "ipv4_pool": str(net.ipv4_pool), "ipv6_pool": str(net.ipv6_pool),
        "domain": net.domain, "mtu": net.mtu, "keepalive": net.keepalive,
        "management_networks": [str(n) for n in net.management_networks],
    }, 1) + ",\n  \"hosts\": {")
    empty = True
    for h in hosts:
        out.write(("\n" if empty else ",\n") + _json_field(h.name, host_json(h, net), 2))
        empty = False
    out.write("}" if empty else "\n  }")
    out.write(",\n" + _json_field("expired", expired, 1) + ",\n"
              + _json_field("warnings", warnings(), 1) + "\n}\n")


def _json_field(key: str, value: Any, depth: int) -> str:
    return f"{'  ' * depth}{_quote(key)}: {_json_text(value, depth)}"


def _json_text(value: Any, depth: int) -> str:
    """What ``json.dumps(value, indent=2)`` writes at that depth. json's C encoder is not
    used when indenting; this is, for the strings that are nearly all of a plan."""
    if isinstance(value, _Raw):
        return value
    if isinstance(value, str):
        return _quote(value)
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{inner}{_quote(k)}: {_json_text(v, depth + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        if all(type(v) is str for v in value):
            items = (inner + q for q in map(_quote, value))
        else:
            items = (inner + _json_text(v, depth + 1) for v in value)
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)  # numbers, booleans, null


def plan_json(hosts: dict[str, HostOutput], net: Network, expired: list[str],
              warnings: list[str]) -> str:
    buf = io.StringIO()
    write_plan(buf, (h for _, h in sorted(hosts.items())), net, expired, lambda: warnings)
    return buf.getvalue()
