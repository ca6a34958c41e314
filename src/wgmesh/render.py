"""Renderers: one per output a host receives. Sorted, never timestamped, never a secret."""

from __future__ import annotations

import functools
import hashlib
import io
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, TextIO

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    BUNDLE_FORMAT,
    DENIED_LOG_GROUP,
    DENIED_LOG_PREFIX,
    DNSMASQ_CONF,
    DNSMASQ_PID,
    MANAGEMENT_RULE_PRIORITY,
    PROTO_NAMES,
    RESOLVER_CONF,
    RESOLVER_PID,
    RULESET_PATH,
    TABLE_NAME,
    bundle_hash,
)
from wgmesh import grammar
from wgmesh.compiler import HostOutput, Peer
from wgmesh.intervals import Box
from wgmesh.mesh import Network

# The paths and numbers hosts share with the controller (the management rules' priority,
# the table's file, dnsmasq's) are the host contract's (plugins/module_utils).
TABLE = TABLE_NAME
# The first thing every wgmesh interface's wg-quick file does, on every path that brings it
# up (wg-quick@ at boot, `wg-quick up`, wgmesh_apply): load the host's table. wg-quick runs
# PreUp before it creates the interface and stops at a hook that fails, so a table that is
# missing, unreadable or refused by nft leaves the interface down, with the reason on
# stderr (the journal under systemd). Fixed text: no value from any input.
FILTER_HOOK = (f"PreUp = nft -f {RULESET_PATH} || {{ echo \"wgmesh: %i stays down: its "
               f"filter {RULESET_PATH} did not load\" >&2; exit 1; }}")
# After the key (wg-quick sets the peers before PostUp loads it, so the keepalives they
# trigger go out with no key): a peer with a keepalive gets one now, so a host behind NAT
# opens its tunnels at boot instead of when it next has a packet to send. Fixed text too.
HANDSHAKE_HOOK = ('PostUp = wg show %i persistent-keepalive | while read -r peer every; do '
                  '[ "$every" = off ] || { wg set %i peer "$peer" persistent-keepalive 0; '
                  'wg set %i peer "$peer" persistent-keepalive "$every"; }; done')
# Split DNS comes back with the interface, at boot too (resolved forgets a link's DNS when
# the link goes; the dnsmasq wgmesh_apply starts is a process, not a service): per-link DNS
# where systemd-resolved runs, else that dnsmasq, from the configuration the module wrote,
# unless it runs. Never stops the interface coming up.


def split_dns_hook(dns: dict[str, list[str]]) -> str:
    servers = " ".join(sorted({s for v in dns.values() for s in v}))
    domains = " ".join(f"~{d}" for d in sorted(dns))
    return ("PostUp = if [ -d /run/systemd/resolve ] && command -v resolvectl >/dev/null; "
            f"then resolvectl dns %i {servers} && resolvectl domain %i {domains}; "
            f"elif [ -e {DNSMASQ_CONF} ] && ! pgrep -x -F {DNSMASQ_PID} dnsmasq >/dev/null; "
            f"then dnsmasq --conf-file={DNSMASQ_CONF}; fi || true")

# The mesh resolver (docs/routing.md, Names): a dnsmasq of its own on the node's mesh
# addresses, started again with the interface (at boot too) when it does not run.
RESOLVER_HOOK = (f"PostUp = if [ -e {RESOLVER_CONF} ] && ! pgrep -x -F {RESOLVER_PID} dnsmasq "
                 f">/dev/null; then dnsmasq --conf-file={RESOLVER_CONF}; fi || true")


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


# set name -> (typeof expression, dimensions that are addresses of which family)
SET_TYPES = {
    "in{f}": "{ip} saddr . meta l4proto . th dport",
    "in{f}p": "{ip} saddr . meta l4proto",
    "ping_in{f}": "{ip} saddr",
    "out{f}": "{ip} daddr . meta l4proto . th dport",
    "out{f}p": "{ip} daddr . meta l4proto",
    "ping_out{f}": "{ip} daddr",
    "fwd{f}": "{ip} saddr . {ip} daddr . meta l4proto . th dport",
    "fwd{f}p": "{ip} saddr . {ip} daddr . meta l4proto",
    "ping_fwd{f}": "{ip} saddr . {ip} daddr",
}


@functools.lru_cache(maxsize=1 << 16)
def _addr(value: int, family: int) -> str:
    # Node addresses recur in every host's sets; formatting IPv6 is costly.
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


@functools.lru_cache(maxsize=1 << 18)
def addr_range(lo: int, hi: int, family: int) -> str:
    """An address range as nft writes it: address, prefix, or first-last."""
    if lo == hi:
        return _addr(lo, family)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if family == 4 else 128
        return f"{_addr(lo, family)}/{bits - size.bit_length() + 1}"
    return f"{_addr(lo, family)}-{_addr(hi, family)}"


@functools.lru_cache(maxsize=4096)
def _proto_ports(proto: int, ports: tuple[int, int] | None) -> str:
    text = PROTO_NAMES.get(proto, str(proto))
    if ports is None:
        return text
    lo, hi = ports
    return f"{text} . {lo}" if lo == hi else f"{text} . {lo}-{hi}"


def element(key: str, box: Box, family: int) -> str:
    """One set element; address dimensions first, then protocol, then ports."""
    n_addr = _address_dims(key)
    parts = [addr_range(lo, hi, family) for lo, hi in box[:n_addr]]
    rest = box[n_addr:]
    if rest:
        parts.append(_proto_ports(rest[0][0], rest[1] if len(rest) > 1 else None))
    return " . ".join(parts)


def set_elements(key: str, boxes: tuple[Box, ...], family: int) -> tuple[str, ...]:
    """A set's elements as nft text. The host sets' shapes (address, address . protocol
    . ports) skip the general path: they are most of a large mesh's output."""
    if boxes and _address_dims(key) == 1:
        if len(boxes[0]) == 1:
            return tuple(addr_range(a[0], a[1], family) for (a,) in boxes)
        if len(boxes[0]) == 3:
            return tuple(f"{addr_range(a[0], a[1], family)} . {_proto_ports(p[0], ports)}"
                         for a, p, ports in boxes)
    return tuple(element(key, b, family) for b in boxes)


def _address_dims(key: str) -> int:
    """Forwarding sets match source and destination; host sets one address."""
    return 2 if key.startswith(("fwd", "ping_fwd")) else 1


@functools.lru_cache(maxsize=1 << 12)
def _element_lines(key: str, boxes: tuple[Box, ...], family: int) -> str:
    """A set's elements, one per line. Hosts with the same role share the same sets, so the
    text is made once; the ruleset and the plan both take it from here (one joined string
    is far smaller than a tuple of them, and elements hold no character JSON escapes)."""
    return "\n".join(set_elements(key, boxes, family))


def _element_block(key: str, boxes: tuple[Box, ...], family: int) -> str:
    indent = "            "
    elements = _element_lines(key, boxes, family).replace("\n", ",\n" + indent)
    return f"        elements = {{\n{indent}{elements},\n        }}"


def nftables(host: HostOutput, net: Network) -> str:
    """The host's table: ``nft -f`` of this text replaces it whole and atomically (at boot,
    when an interface comes up); a host that runs it already changes it in place
    (wgmesh_nftables.in_place), so that no untouched flow loses a packet.

    A connection is checked against the sets until one of its packets passes; the pass
    marks it (conntrack mark) with this table's generation, a number derived from the
    table's text, and its later packets pass on the mark alone. A new table has another
    generation, so after a change every open connection is checked again on its next
    packet: a change that takes access away also ends connections already open.
    Replies are checked with their fields reversed against the other direction's sets (a
    reply's source and source port are its connection's destination and port). Mesh
    addresses exist only on the mesh interfaces: from or for one elsewhere, a packet is
    forged and dropped. Other interfaces (the management path) are not filtered.
    """
    wg, hop = net.interface, net.hop_interface
    clean(host.name, wg)
    lines = [
        f"# wgmesh policy filter for {host.name}: traffic on {wg} and {hop} is filtered;",
        "# on other interfaces (the management path) only forged mesh addresses are dropped.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    for pattern, typeof in SET_TYPES.items():
        for f in (4, 6):
            key = pattern.format(f=f)
            lines += [f"    set {key} {{",
                      f"        typeof {typeof.format(ip='ip' if f == 4 else 'ip6')}",
                      "        flags interval"]
            if host.sets.get(key):
                lines.append(_element_block(key, host.sets[key], f))
            lines.append("    }")
    relay_pairs = host.hop.pairs if host.hop else []
    if relay_pairs:
        # A relay forwards only the end-to-end WireGuard packets of pairs policy relates.
        lines += ["    set relay6 {",
                  "        typeof ip6 saddr . ip6 daddr . meta l4proto . th dport",
                  "        elements = {"]
        for src, dst, port in relay_pairs:
            clean(src, dst)
            lines.append(f"            {src} . {dst} . udp . {port},")
        lines += ["        }", "    }", "    counter dropped_relay { }"]
    agents = host.agent.counterparts if host.agent else []
    if agents:
        # NAT traversal: the agents of this host and of its lighthouses or punch peers talk
        # on the agent port at both ends, and on nothing else the policy does not allow.
        clean(*agents)
        lines += ["    set agent4 {", "        typeof ip saddr",
                  f"        elements = {{ {', '.join(agents)} }}", "    }"]
    for name in ("dropped_in", "dropped_out", "dropped_fwd", "dropped_underlay", "dropped_hop"):
        lines.append(f"    counter {name} {{ }}")
    if net.log_denied:
        lines.append(f"    limit {DENIED_LOG_LIMIT} {{ rate 10/second burst 20 packets }}")

    v4, v6 = net.ipv4_pool, (net.ipv6_pool, net.relay_pool)
    forged = 'counter name "dropped_underlay" drop'
    hop_drop = 'counter name "dropped_hop" drop'
    # Nodes behind a relay receive and send only end-to-end WireGuard on the hop interface.
    hop_client = bool(host.hop and not relay_pairs)
    my_hop = host.hop.address.split("/")[0] if hop_client else None

    # Each base chain sends a packet to its interface's chain after a few comparisons, so
    # the underlay's own packets (the tunnels' UDP) pass quickly and a mesh packet meets
    # only its direction's sets: per-packet cost does not grow with the rules. Rules hold no
    # anonymous set or map: while a change commits, a rule of the outgoing table can be
    # evaluated against the incoming generation, where its anonymous map's elements are
    # already gone (docs/nftables.md, "Changed in place").
    lines += ["    chain input {",
              "        type filter hook input priority filter; policy accept;",
              '        iifname "lo" accept',
              f'        iifname "{wg}" jump mesh_in',
              f'        iifname "{hop}" jump hop_in',
              f"        ip saddr {v4} {forged}",
              f"        ip daddr {v4} {forged}",
              *(f"        ip6 {field} {pool} {forged}"
                for field in ("saddr", "daddr") for pool in v6),
              "    }",
              "    chain output {",
              "        type filter hook output priority filter; policy accept;",
              f'        oifname "{wg}" jump mesh_out',
              f'        oifname "{hop}" jump hop_out',
              "    }",
              "    chain forward {",
              "        type filter hook forward priority filter; policy accept;",
              f'        iifname "{wg}" jump fwd_from_mesh',
              f'        iifname "{hop}" jump fwd_from_hop',
              f"        ip saddr {v4} {forged}",
              *(f"        ip6 saddr {pool} {forged}" for pool in v6),
              f'        oifname "{hop}" {hop_drop}',
              f'        oifname "{wg}" jump mesh_fwd',
              "    }",
              "    chain hop_in {",
              *_STATE]
    if hop_client:
        lines.append(f"        ip6 saddr {net.relay_pool} ip6 daddr {my_hop} "
                     f"udp dport {host.listen_port} accept")
    lines += [f"        {hop_drop}",
              "    }",
              "    chain hop_out {",
              *_STATE]
    if hop_client:
        lines.append(f"        ip6 saddr {my_hop} ip6 daddr {net.relay_pool} "
                     f"udp sport {host.listen_port} accept")
    lines += [*_CHATTER,
              f"        {hop_drop}",
              "    }",
              "    chain fwd_from_mesh {",
              f'        oifname "{hop}" {hop_drop}',
              "        jump mesh_fwd",
              "    }",
              "    chain fwd_from_hop {"]
    if relay_pairs:
        lines += [f'        oifname "{hop}" ip6 saddr . ip6 daddr . meta l4proto . th dport '
                  "@relay6 accept",
                  f'        oifname "{hop}" counter name "dropped_relay" drop']
    lines += [f"        {hop_drop}",
              "    }"]
    for chain, direction, reverse, dropped in (("mesh_in", "in", "out", "dropped_in"),
                                               ("mesh_out", "out", "in", "dropped_out"),
                                               ("mesh_fwd", "fwd", "fwd", "dropped_fwd")):
        orig, back = _policy_rules(direction, reverse)
        agent_rule = []
        if agents and direction != "fwd":
            peer = "saddr" if direction == "in" else "daddr"
            port = host.agent.port
            agent_rule = [f"        ip {peer} @agent4 udp sport {port} udp dport {port} accept"]
        chatter = _CHATTER if direction == "out" else []
        lines += [f"    chain {chain} {{",
                  # Checked against this very table already (see the docstring). First: a
                  # packet conntrack finds invalid belongs to no connection, so it has no
                  # mark and goes on to be dropped; an ICMP error about a connection carries
                  # that connection's mark.
                  f"        ct mark {GENERATION} accept",
                  *_STATE,
                  *agent_rule,
                  # A reply tries its connection's sets first and, failing them, its own.
                  f"        ct direction reply jump {chain}_reply",
                  *orig,
                  *chatter,
                  *(_denied_log(direction) if net.log_denied else []),
                  f'        counter name "{dropped}" drop',
                  "    }",
                  f"    chain {chain}_reply {{",
                  *back,
                  "    }"]
    if host.snat:
        lines += [
            "    chain postrouting {",
            "        type nat hook postrouting priority srcnat; policy accept;",
            "        # Routed LANs and the internet see the router's address, so replies",
            "        # come back through it without routes for the mesh.",
            f'        iifname "{wg}" oifname != "{wg}" masquerade',
            "    }",
        ]
    lines.append("}")
    # The generation: 32 bits of the table's digest (with the placeholder in it), never 0
    # (the mark of a connection nothing marked).
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    generation = f"{int.from_bytes(digest.digest()[:4], 'big') or 1:#010x}"
    return "".join((line.replace(GENERATION, generation) if GENERATION in line else line)
                   + "\n" for line in lines)


# The kernel's own multicast chatter on a WireGuard interface (router solicitations and
# listener reports to ff02::/16, IGMP reports to 224.0.0.22) has no peer to go to: dropped
# on the way out, and neither counted nor logged with what the policy (or the hop
# interface's rules) refuses.
_CHATTER = ["        ip daddr 224.0.0.0/4 drop", "        ip6 daddr ff02::/16 drop"]
DENIED_LOG_LIMIT = "denied_log"


def _denied_log(direction: str) -> list[str]:
    """Copy a packet the policy drops to the monitor's nflog group, under the host's shared
    rate limit: its headers up to the transport ports and no further (IPv4 without options:
    24 bytes; IPv6: 44), so no payload byte leaves the kernel."""
    return [f'        meta nfproto {family} limit name "{DENIED_LOG_LIMIT}" log prefix '
            f'"{DENIED_LOG_PREFIX}{direction}" group {DENIED_LOG_GROUP} snaplen {snaplen}'
            for family, snaplen in (("ipv4", 24), ("ipv6", 44))]


# Stands for the table's generation until the text around it is complete.
GENERATION = "%generation%"
# A connection that passes the sets is marked with the generation on its way through.
PASS = f"ct mark set {GENERATION} accept"

# ICMP errors about a connection (unreachable, packet too big) pass with it.
_STATE = ("        ct state invalid drop", "        ct state related accept")


def _policy_rules(direction: str, reverse: str) -> tuple[list[str], list[str]]:
    """The set lookups of one chain: a packet passes when its own fields are in this
    direction's sets (the first list), or when it is a reply whose reversed fields are in
    the sets of the direction its connection was opened in (the second). On a host the peer
    is the source on the way in and the destination on the way out, for replies too; only
    the port swaps sides."""
    if direction == "fwd":
        orig = {4: "ip saddr . ip daddr", 6: "ip6 saddr . ip6 daddr"}
        back = {4: "ip daddr . ip saddr", 6: "ip6 daddr . ip6 saddr"}
    else:
        peer = "saddr" if direction == "in" else "daddr"
        orig = back = {4: f"ip {peer}", 6: f"ip6 {peer}"}
    own, replies = [], []
    for f, icmp in ((4, "icmp"), (6, "icmpv6")):
        own += [f"        {icmp} type echo-request {orig[f]} @ping_{direction}{f} {PASS}",
                f"        {orig[f]} . meta l4proto . th dport @{direction}{f} {PASS}",
                f"        {orig[f]} . meta l4proto @{direction}{f}p {PASS}"]
        replies += [f"        {icmp} type echo-reply {back[f]} @ping_{reverse}{f} {PASS}",
                    f"        {back[f]} . meta l4proto . th sport @{reverse}{f} {PASS}",
                    f"        {back[f]} . meta l4proto @{reverse}{f}p {PASS}"]
    return own, replies


def wg_quick(host: HostOutput, net: Network) -> str:
    """wg-quick configuration with no PrivateKey: the host loads its own key file."""
    clean(host.name, net.interface, str(host.ipv4), str(host.ipv6))
    lines = [
        f"# wgmesh: {net.interface} on {host.name}. Generated; holds no secret.",
        "[Interface]",
        # The pools' prefixes: one connected route covers every peer's mesh address, so a
        # peer added live by wg syncconf needs no route of its own.
        f"Address = {host.ipv4}/{net.ipv4_pool.prefixlen}, {host.ipv6}/{net.ipv6_pool.prefixlen}",
        f"ListenPort = {host.listen_port}",
        f"MTU = {host.mtu}",
        FILTER_HOOK,
        f"PostUp = wg set %i private-key /etc/wireguard/{net.interface}.key",
        HANDSHAKE_HOOK,
    ]
    dns = _split_dns(host)
    if dns:
        lines.append(split_dns_hook(dns))
    if host.resolver:
        lines.append(RESOLVER_HOOK)
    if host.uses_exit_node:
        lines += management_rules(net)
    for peer in host.peers:
        lines.append(peer_block(peer))
    return "\n".join(lines) + "\n"


def management_rules(net: Network) -> list[str]:
    """Hooks that keep the management networks on the main table (their own default
    gateway) while the exit node takes the default route; wg-quick runs them at every up,
    and wgmesh_apply applies the same rules live."""
    lines = []
    for n in net.management_networks:
        clean(str(n))
        rule = f"ip -{n.version} rule %s to {n} lookup main priority {MANAGEMENT_RULE_PRIORITY}"
        # A rule left over from a crash would make "add" fail and the interface not come up.
        lines.append(f"PostUp = {rule % 'del'} 2>/dev/null || true; {rule % 'add'}")
        lines.append(f"PreDown = {rule % 'del'} || true")
    return lines


@functools.lru_cache(maxsize=1 << 16)
def peer_block(peer: Peer) -> str:
    """One [Peer] section; hosts that see a peer alike share its object, so it is made once."""
    clean(peer.name, peer.connection, *peer.roles, *peer.allowed_ips)
    if peer.relay:
        clean(peer.relay)
    if peer.endpoint:
        clean(peer.endpoint)
    if peer.public_key:
        clean_key(peer.public_key)
    how = peer.connection + (f" via {peer.relay}" if peer.relay else "")
    role_text = f", {'/'.join(peer.roles)}" if peer.roles else ""
    if not peer.public_key:
        return (f"\n# {peer.name} ({how}{role_text}): public key not known yet; the next "
                "site.yml run collects it")
    lines = ["", "[Peer]", f"# {peer.name} ({how}{role_text})", f"PublicKey = {peer.public_key}",
             f"AllowedIPs = {', '.join(peer.allowed_ips)}"]
    if peer.endpoint:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.keepalive:
        lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return "\n".join(lines)


def hop_conf(host: HostOutput, net: Network) -> str | None:
    """wg-quick file of the hop interface (relays and the nodes they carry), no secret."""
    hop = host.hop
    if hop is None:
        return None
    clean(host.name, hop.interface, hop.address, net.interface)
    lines = [f"# wgmesh: {hop.interface} on {host.name}, the hop tunnel to or of a relay. "
             "Holds no secret.", "[Interface]", f"Address = {hop.address}"]
    if hop.listen_port:
        lines.append(f"ListenPort = {hop.listen_port}")
    lines.append(FILTER_HOOK)
    # The same key as the mesh interface: the relay knows this node by its pinned key.
    lines += [f"PostUp = wg set %i private-key /etc/wireguard/{net.interface}.key",
              HANDSHAKE_HOOK]
    for p in hop.peers:
        clean(p.name, *p.allowed_ips, *([p.endpoint] if p.endpoint else []))
        if not p.public_key:
            lines += ["", f"# {p.name}: public key not known yet"]
            continue
        clean_key(p.public_key)
        lines += ["", "[Peer]", f"# {p.name}", f"PublicKey = {p.public_key}",
                  f"AllowedIPs = {', '.join(p.allowed_ips)}"]
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.keepalive:
            lines.append(f"PersistentKeepalive = {p.keepalive}")
    return "\n".join(lines) + "\n"


def hosts_block(host: HostOutput) -> str:
    """Lines for the managed block of /etc/hosts: the peers this host can see, and itself."""
    return "".join(map(_name_line, host.names))


@functools.lru_cache(maxsize=1 << 16)
def _name_line(entry: tuple[str, tuple[str, str]]) -> str:
    clean(entry[0], *entry[1])
    return f"{entry[0]}\t{' '.join(entry[1])}\n"


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
    lines = _element_lines(key, boxes, family).replace("\n", f'",\n{inner}"')
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


# What a host runs, as one document: the apply module compares the host with it and
# converges it in one step. Its hash is over content only, so the same state reached from two
# commits is one bundle; the commit says where the inputs came from.
SYSCTL_FORWARDING = ("# wgmesh: this host forwards for a subnet route or as exit node\n"
                     "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n")


def sshd_dropin(host: HostOutput) -> str | None:
    """The sshd configuration of an SSH-managed host: over the mesh (connections to its mesh
    addresses), each source node may log in only as the users the ssh rules name. Other
    connections, the management path among them, do not match and are not affected."""
    if host.ssh is None:
        return None
    clean(host.name, str(host.ipv4), str(host.ipv6))
    me = f"{host.ipv4},{host.ipv6}"
    allow, deny = [], []
    for name, v4, v6, logins, nonroot in host.ssh:
        clean(name, v4, v6)
        for login in logins:
            if not grammar.matches(grammar.LOGIN, login):
                raise RenderError(f"refusing to render the login {login!r}")
        for addr in (v4, v6):
            if nonroot:
                allow.append(f"*@{addr}")
                if "root" not in logins:
                    deny.append(f"root@{addr}")
            else:
                allow += [f"{user}@{addr}" for user in logins]
    lines = [f"# wgmesh: who may log in to {host.name} over the mesh, as whom (the policy's "
             "ssh rules).",
             "# Generated; holds no secret. Only connections to this host's mesh addresses "
             "match:",
             "# every other connection (the management path) is not affected.",
             f"Match LocalAddress {me}"]
    if allow:
        lines.append(f"    AllowUsers {' '.join(allow)}")
    if deny or not allow:
        lines.append(f"    DenyUsers {' '.join(deny) if allow else '*'}")
    lines.append("Match all")
    return "\n".join(lines) + "\n"


def split_dns_text(host: HostOutput) -> str | None:
    """The bundle's split DNS in words, for review: a domain and its nameservers a line."""
    dns = _split_dns(host)
    if dns is None:
        return None
    return ("# wgmesh: split DNS: names under these domains are asked of these nameservers\n"
            + "".join(f"{d} {' '.join(dns[d])}\n" for d in sorted(dns)))


def _split_dns(host: HostOutput) -> dict[str, list[str]] | None:
    if not host.dns:
        return None
    for domain, servers in host.dns.items():
        clean(domain, *servers)
    return host.dns


def resolver_conf(host: HostOutput) -> str | None:
    """The mesh resolver's dnsmasq configuration: it listens on the mesh addresses only
    (bind-dynamic: it may start before they exist), answers every node's name and nothing
    else under the mesh domain, asks the split domains' nameservers for those, and its
    host's own resolvers for the rest. Never a bare name upstream."""
    r = host.resolver
    if r is None:
        return None
    clean(host.name, r.domain, *r.addresses, *(v for rec in r.records for v in rec),
          *r.split, *(s for servers in r.split.values() for s in servers))
    lines = [f"# wgmesh: the mesh resolver on {host.name}. Generated; holds no secret.",
             *(f"listen-address={a}" for a in r.addresses), "bind-dynamic", "port=53",
             f"pid-file={RESOLVER_PID}", "no-hosts", "domain-needed",
             "resolv-file=/etc/resolv.conf", "cache-size=1000", f"local=/{r.domain}/",
             *(f"host-record={','.join(rec)}" for rec in r.records),
             *(f"server=/{d}/{s}" for d in sorted(r.split) for s in r.split[d])]
    return "\n".join(lines) + "\n"


def agent_json(host: HostOutput) -> dict[str, Any]:
    """The agent's part of a bundle: every value checked here and again on the host."""
    a = host.agent
    clean(a.address, *(v for lh in a.lighthouses for v in lh[:2]),
          *(v for p in a.punch for v in (p[0], p[2], p[3], p[4])))
    for key in [*(lh[2] for lh in a.lighthouses), *(p[1] for p in a.punch)]:
        clean_key(key)
    out: dict[str, Any] = {
        "port": a.port,
        "address": a.address,
        "lighthouses": [{"name": n, "address": addr, "public_key": k}
                        for n, addr, k in a.lighthouses],
        "punch": [{"name": n, "public_key": k, "address": addr, "relay_endpoint": ep,
                   "relay": relay} for n, k, addr, ep, relay in a.punch],
    }
    if a.clients:
        for addr, (name, key, peers) in a.clients.items():
            clean(addr, name)
            for k in (key, *peers):
                clean_key(k)
        out["clients"] = {addr: {"name": n, "public_key": k, "peers": ps}
                          for addr, (n, k, ps) in a.clients.items()}
    return out


def bundle(host: HostOutput, net: Network, public_key: str | None,
           commit: str | None = None) -> dict[str, Any]:
    if public_key:
        clean_key(public_key)
    body: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": host.name,
        "interface": net.interface,
        "hop_interface": net.hop_interface,
        "public_key": public_key,
        "wg_conf": wg_quick(host, net),
        "hop_conf": hop_conf(host, net),
        "nftables": nftables(host, net),
        "hosts_block": hosts_block(host),
        "sysctl": SYSCTL_FORWARDING if host.forwarding else None,
        "sshd": sshd_dropin(host),
        "dns": _split_dns(host),
        "uses_exit_node": host.uses_exit_node,
        "management_networks": ([str(n) for n in net.management_networks]
                                if host.uses_exit_node else []),
    }
    if host.agent:
        body["agent"] = agent_json(host)
    if host.resolver:
        body["resolver_conf"] = resolver_conf(host)
    if net.key_max_age_days or host.node.expires:
        # What the monitor reports of the key and the node's end (wgmesh_metrics).
        body["monitor"] = {"key_max_age_days": net.key_max_age_days,
                           "expires": host.node.expires.isoformat() if host.node.expires
                           else None}
    body["hash"] = bundle_hash(body)
    body["commit"] = commit
    return body
