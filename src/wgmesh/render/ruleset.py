"""The host's nftables table (docs/nftables.md)."""

from __future__ import annotations

import functools
import hashlib
import ipaddress

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DENIED_LOG_GROUP,
    DENIED_LOG_PREFIX,
    PROTO_NAMES,
    TABLE_NAME,
)
from wgmesh.compile.hostoutput import HostOutput
from wgmesh.intervals import Box
from wgmesh.mesh import Network
from wgmesh.render.common import clean

# The paths and numbers hosts share with the controller (the management rules' priority,
# the table's file, dnsmasq's) are the host contract's (plugins/module_utils).
TABLE = TABLE_NAME


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
def element_lines(key: str, boxes: tuple[Box, ...], family: int) -> str:
    """A set's elements, one per line. Hosts with the same role share the same sets, so the
    text is made once; the ruleset and the plan both take it from here (one joined string
    is far smaller than a tuple of them, and elements hold no character JSON escapes)."""
    return "\n".join(set_elements(key, boxes, family))


def _element_block(key: str, boxes: tuple[Box, ...], family: int) -> str:
    indent = "            "
    elements = element_lines(key, boxes, family).replace("\n", ",\n" + indent)
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
