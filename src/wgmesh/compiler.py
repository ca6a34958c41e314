"""Compile a mesh and its policy into every host's peers, filters and names.

Selectors are resolved once per compile into node bitmasks (Python ints) and address ranges;
each host's output is then a pass over the rules, so one host costs O(rules x nodes) and the
whole mesh costs time proportional to what it outputs. The evaluator (``Evaluator``) decides
the same questions from identities, independently of the filter sets, so tests can check one
against the other.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import functools
import gc
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from wgmesh import limits
from wgmesh.errors import InputError, Problem
from wgmesh.grammar import endpoint as parse_endpoint
from wgmesh.intervals import Box, Grouped, bits, disjoint_grouped, merge_ranges
from wgmesh.lock import Allocation
from wgmesh.mesh import Mesh, Node
from wgmesh.policy import ICMP, PORT_PROTOS, Policy, Rule

V4_MAX, V6_MAX = 2**32 - 1, 2**128 - 1
FAMILIES = (4, 6)


def _r(a: str, b: str) -> tuple[int, int]:
    return int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))


# Tailscale's autogroup:internet: everything but private, CGNAT and link-local IPv4, and
# global unicast IPv6.
INTERNET = {
    4: [_r("0.0.0.0", "9.255.255.255"), _r("11.0.0.0", "100.63.255.255"),
        _r("100.128.0.0", "169.253.255.255"), _r("169.255.0.0", "172.15.255.255"),
        _r("172.32.0.0", "192.167.255.255"), _r("192.169.0.0", "255.255.255.255")],
    6: [_r("2000::", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")],
}
EVERYTHING = {4: [(0, V4_MAX)], 6: [(0, V6_MAX)]}


def net_range(net) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def in_ranges(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def clip(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intersection of two range lists."""
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return merge_ranges(out)


def subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges of ``a`` not covered by ``b``."""
    out = []
    for lo, hi in a:
        for blo, bhi in merge_ranges(b):
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


@dataclass(frozen=True)
class Endpoint:
    """Who or what a packet comes from or goes to, for the evaluator."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    node: str | None = None
    user: str | None = None
    tags: frozenset[str] = frozenset()


# Shared between hosts that see the peer alike: never mutate. Identity is its equality, so a
# renderer can cache one text per object.
@dataclass(frozen=True, eq=False)
class Peer:
    name: str
    public_key: str | None
    allowed_ips: list[str]
    endpoint: str | None
    keepalive: int | None
    connection: str  # direct | lan | relay | none
    relay: str | None = None
    roles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HopPeer:
    name: str
    public_key: str | None
    allowed_ips: list[str]
    endpoint: str | None
    keepalive: int | None


@dataclass
class Hop:
    """The hop interface that carries end-to-end WireGuard sessions through a relay. On a
    relay, ``pairs`` are the (source hop, destination hop, UDP port) it may forward."""

    interface: str
    address: str
    listen_port: int | None
    peers: list[HopPeer]
    pairs: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass
class HostOutput:
    name: str
    node: Node
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    listen_port: int
    peers: list[Peer]
    sets: dict[str, tuple[Box, ...]]  # set name -> disjoint elements
    routes: list[str]
    exit_node: bool
    forwarding: bool
    names: list[tuple[str, tuple[str, str]]]  # address, (name, fqdn)
    mtu: int = 1420
    hop: Hop | None = None
    snat: bool = False  # masquerade what leaves the mesh (exit nodes; routers by default)
    uses_exit_node: str | None = None  # the exit node this host sends its internet traffic to


@dataclass
class _RuleData:
    rule: Rule
    src_mask: dict[int, int]  # family -> node mask (nodes whose address of that family matches)
    dst_mask: dict[int, int]
    src_ranges: dict[int, list[tuple[int, int]]]
    dst_ranges: dict[int, list[tuple[int, int]]]  # everything the rule lets sources send to
    dst_cidr: dict[int, list[tuple[int, int]]]  # prefixes a subnet router may carry
    self_dst: bool
    port_boxes: list[tuple[tuple[int, int], tuple[int, int]]]  # (proto, proto), (lo, hi)
    other_protos: list[int]
    via: int | None = None  # grants with via: the routers and exit nodes that may carry dst
    any_src: int = field(init=False)  # nodes named as source, either family
    any_dst: int = field(init=False)
    self_only: bool = field(init=False)  # autogroup:self is the rule's only destination

    def __post_init__(self) -> None:
        self.any_src = self.src_mask[4] | self.src_mask[6]
        self.any_dst = self.dst_mask[4] | self.dst_mask[6]
        self.self_only = all(d == "autogroup:self" for d in self.rule.dst)


class Compiler:
    """Everything about one mesh that every host's output is derived from."""

    def __init__(self, mesh: Mesh, policy: Policy, alloc: dict[str, Allocation],
                 today: dt.date | None = None):
        self.mesh = mesh
        self.policy = policy
        self.net = mesh.network
        today = today or dt.date.today()
        self.expired = sorted(n for n, node in mesh.nodes.items()
                              if node.expires and node.expires < today)
        self.names = sorted(n for n in mesh.nodes if n not in self.expired)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.nodes = [mesh.nodes[n] for n in self.names]
        self.alloc = alloc
        self.addr = {4: [int(alloc[n].ipv4) for n in self.names],
                     6: [int(alloc[n].ipv6) for n in self.names]}
        self.by_addr = {(4, a): i for i, a in enumerate(self.addr[4])}
        self.by_addr.update({(6, a): i for i, a in enumerate(self.addr[6])})
        self.all_mask = (1 << len(self.names)) - 1
        self.problems: list[Problem] = []
        self._warnings: list[str] = list(policy.warnings)
        self._warnings += key_age_warnings(mesh, alloc, self.names, today)
        self._mask_cache: dict[str, dict[int, int]] = {}
        self._range_cache: dict[int, tuple[list, list]] = {}
        self._check_tags()
        self._check_unique_keys()
        self.routes, self.exits = self._approvals()
        self.user_mask = self._user_masks()
        self.relays = [n for n in self.nodes if n.relay]
        if self.relays:
            self._check_hop_addresses()
        self.exit_users: dict[str, int] = defaultdict(int)
        for i, n in enumerate(self.nodes):
            if n.use_exit_node:
                self.exit_users[n.use_exit_node] |= 1 << i
        self._set_cache: dict[str, dict[tuple, dict[str, list[Box]]]] = {}
        self._peer_cache: dict[tuple, Peer] = {}
        # Pairs that can never connect: a bitmap over node pairs (a large NAT-heavy mesh has
        # millions), their count, and the first few by name for the warning.
        self._dead_bits = bytearray()
        self._dead_count = 0
        self._dead_first: list[tuple[str, str]] = []
        self.pools = {4: [net_range(self.net.ipv4_pool)], 6: [net_range(self.net.ipv6_pool)]}
        self.all_routes = {f: merge_ranges(r for rs in self.routes.values() for r in rs[f])
                           for f in FAMILIES}
        # autogroup:internet is what exit nodes carry: approved subnets go through routers.
        self.internet = {f: subtract(INTERNET[f], self.all_routes[f]) for f in FAMILIES}
        self.rules = [self._rule_data(r) for r in policy.rules]
        self.exit_blocked: set[int] = set()
        self._check_exit_use()
        for i in self.exit_blocked:
            self.exit_users[self.nodes[i].use_exit_node] &= ~(1 << i)
        if self.problems:
            raise InputError(self.problems)

    # Validation across mesh and policy ------------------------------------------------
    def _mesh_error(self, node: str, key: str | None, message: str, fix: str = "") -> None:
        line, col = self.mesh.where(node, key) if key else self.mesh.where(node)
        self.problems.append(Problem(str(self.mesh.path), line, col,
                                     f"nodes.{node}" + (f".{key}" if key else ""), message, fix))

    def _check_unique_keys(self) -> None:
        """One key, one node: WireGuard routes by key, so a second node with the same key
        would silently take over the first one's traffic."""
        seen: dict[str, str] = {}
        for name in sorted(self.mesh.nodes):
            key = self.alloc[name].public_key
            if key is None:
                continue
            if key in seen:
                self._mesh_error(name, "public_key" if not self.mesh.nodes[name].managed
                                 else None, f"has the same public key as node {seen[key]}",
                                 "every device needs its own key; if one was copied, make a "
                                 "new key on it and pin that")
            else:
                seen[key] = name

    def _check_hop_addresses(self) -> None:
        """Hop addresses are derived from mesh IPv6 addresses; two nodes must not share one,
        or the relay could not tell them apart."""
        seen: dict[ipaddress.IPv6Address, str] = {}
        for name in self.names:
            addr = self.hop_address(name)
            if addr in seen:
                self._mesh_error(name, "address6" if self.mesh.nodes[name].address6 else None,
                                 f"its relay address {addr} is also node {seen[addr]}'s",
                                 f"pin IPv6 addresses that differ in their last "
                                 f"{128 - self.net.relay_pool.prefixlen} bits")
            seen[addr] = name

    def _owner_may_assign(self, node: Node, tag: str, seen: frozenset = frozenset()) -> bool:
        for owner in self.policy.tag_owners.get(tag, ()):
            if owner.startswith("tag:"):
                if owner in node.tags and owner not in seen:
                    return True
            elif owner.startswith("group:"):
                if node.owner in self.policy.groups.get(owner, ()):
                    return True
            elif owner == "autogroup:member":
                if node.owner:
                    return True
            elif owner == node.owner:
                return True
        return False

    def _check_tags(self) -> None:
        for name in self.names:
            node = self.mesh.nodes[name]
            for tag in node.tags:
                if tag not in self.policy.tag_owners:
                    self._mesh_error(name, "tags", f'tag not found: "{tag}"',
                                     f'declare "{tag}" in the policy\'s tagOwners')
                elif node.owner and not self._owner_may_assign(node, tag):
                    self._mesh_error(
                        name, "tags", f'{node.owner} may not assign "{tag}"',
                        f'add the owner (or a group of theirs) to tagOwners["{tag}"], or '
                        "remove owner: to declare an owner-less server")

    def _approver_matches(self, approver: str, node: Node) -> bool:
        if approver.startswith("tag:"):
            return approver in node.tags
        if node.tagged:
            return False  # users and groups approve only their untagged nodes
        if approver.startswith("group:"):
            return node.owner in self.policy.groups.get(approver, ())
        if approver == "autogroup:member":
            return node.owner is not None
        return approver == node.owner

    def _approvals(self):
        routes: dict[int, dict[int, list[tuple[int, int]]]] = {}
        approved_of: dict[int, set] = {}
        exits: set[int] = set()
        for i, node in enumerate(self.nodes):
            approved = set(node.approved_routes)
            for route in node.advertise_routes:
                for prefix, approvers in self.policy.auto_routes:
                    if (route.version == prefix.version and route.subnet_of(prefix)
                            and any(self._approver_matches(a, node) for a in approvers)):
                        approved.add(route)
            for route in node.advertise_routes:
                if route not in approved:
                    self._warnings.append(f"{node.name}: advertised route {route} is not "
                                         "approved and is not used")
            if approved:
                approved_of[i] = approved
                routes[i] = {f: merge_ranges(net_range(r) for r in approved if r.version == f)
                             for f in FAMILIES}
            if node.advertise_exit_node:
                if node.approved_exit_node or any(self._approver_matches(a, node)
                                                  for a in self.policy.auto_exit):
                    exits.add(i)
                else:
                    self._warnings.append(f"{node.name}: exit node is not approved and is not "
                                         "used")
        self._approved_of = approved_of
        self._carried = self._carriers(approved_of)
        for node in self.nodes:
            if node.failover_for and node.failover_for not in self.mesh.nodes:
                self._mesh_error(node.name, "failover_for", f'no node "{node.failover_for}"')
        return routes, exits

    def _carriers(self, approved_of: dict[int, set]) -> dict[int, dict[int, list]]:
        """Which router carries each address for its peers, as Tailscale decides: the longest
        approved prefix wins; of routers approving the very same prefix, one is the primary
        and the others stand by (a router with ``failover_for`` stands by, then name order).
        The result is disjoint between routers, so every address has one next hop."""
        prefixes = sorted(((-net.prefixlen, self.nodes[i].failover_for is not None,
                            self.names[i], net.version, net_range(net), i)
                           for i, nets in approved_of.items() for net in nets))
        taken: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        carried = {i: {4: [], 6: []} for i in approved_of}
        for _len, _standby, _name, f, rng, i in prefixes:
            carried[i][f] += subtract([rng], taken[f])
            taken[f] = merge_ranges([*taken[f], rng])
        return {i: {f: merge_ranges(v) for f, v in fams.items()} for i, fams in carried.items()}

    def client_routes(self) -> dict[int, dict[int, list[tuple[int, int]]]]:
        """Routes peers send through each router (standbys and shadowed prefixes left out)."""
        return self._carried

    def _user_masks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.owner and not node.tagged:
                out[node.owner] = out.get(node.owner, 0) | (1 << i)
        return out

    # Selector resolution -------------------------------------------------------------
    def _identity_mask(self, sel: str) -> int:
        """Nodes an identity selector names, from indexes built once (a selector costs a few
        lookups, not a pass over every node)."""
        if sel == "*":
            return self.all_mask
        if sel.startswith("tag:"):
            return self._tag_masks.get(sel, 0)
        if sel == "autogroup:tagged":
            return self._tagged_mask
        if sel == "autogroup:member":
            return self._member_mask
        if sel.startswith("group:"):
            mask = 0
            for user in self.policy.groups.get(sel, ()):
                mask |= self.user_mask.get(user, 0)
            return mask
        return self.user_mask.get(sel, 0)

    @functools.cached_property
    def _tag_masks(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for i, node in enumerate(self.nodes):
            for tag in node.tags:
                out[tag] |= 1 << i
        return dict(out)

    @functools.cached_property
    def _tagged_mask(self) -> int:
        return sum(1 << i for i, node in enumerate(self.nodes) if node.tagged)

    @functools.cached_property
    def _member_mask(self) -> int:
        mask = 0
        for m in self.user_mask.values():
            mask |= m
        return mask

    def _prefix(self, sel: str):
        if sel in self.policy.hosts:
            return self.policy.hosts[sel]
        try:
            return ipaddress.ip_network(sel, strict=False)
        except ValueError:
            return None

    def masks(self, sel: str) -> dict[int, int]:
        """Nodes a selector names, per address family it names them in."""
        if sel not in self._mask_cache:
            if sel in ("autogroup:internet", "autogroup:self"):
                m = {4: 0, 6: 0}
            elif (net := self._prefix(sel)) is not None:
                lo, hi = net_range(net)
                f = net.version
                m = {4: 0, 6: 0}
                for i, a in enumerate(self.addr[f]):
                    if lo <= a <= hi:
                        m[f] |= 1 << i
            else:
                mask = self._identity_mask(sel)
                m = {4: mask, 6: mask}
            self._mask_cache[sel] = m
        return self._mask_cache[sel]

    def node_ranges(self, mask: int) -> tuple[list, list]:
        """Address ranges (v4, v6) of the nodes in a mask, adjacent addresses joined."""
        if mask not in self._range_cache:
            a4, a6 = self.addr[4], self.addr[6]
            members = bits(mask)
            self._range_cache[mask] = (merge_ranges((a4[i], a4[i]) for i in members),
                                       merge_ranges((a6[i], a6[i]) for i in members))
        return self._range_cache[mask]

    def _rule_data(self, rule: Rule) -> _RuleData:
        src_mask = {4: 0, 6: 0}
        dst_mask = {4: 0, 6: 0}
        src_ranges: dict[int, list] = {4: [], 6: []}
        dst_ranges: dict[int, list] = {4: [], 6: []}
        dst_cidr: dict[int, list] = {4: [], 6: []}
        for sel in rule.src:
            m = self.masks(sel)
            for f in FAMILIES:
                src_mask[f] |= m[f]
            if sel == "*":
                for f in FAMILIES:
                    src_ranges[f] += self.pools[f] + self.all_routes[f]
            elif (net := self._prefix(sel)) is not None:
                src_ranges[net.version].append(net_range(net))
            else:
                v4, v6 = self.node_ranges(m[4])
                src_ranges[4] += v4
                src_ranges[6] += v6
        for sel in rule.dst:
            m = self.masks(sel)
            for f in FAMILIES:
                dst_mask[f] |= m[f]
            if sel == "*":
                for f in FAMILIES:
                    dst_ranges[f] += EVERYTHING[f]
                    dst_cidr[f] += EVERYTHING[f]
            elif sel == "autogroup:internet":
                for f in FAMILIES:
                    dst_ranges[f] += self.internet[f]
            elif (net := self._prefix(sel)) is not None:
                dst_ranges[net.version].append(net_range(net))
                dst_cidr[net.version].append(net_range(net))
            elif sel != "autogroup:self":
                v4, v6 = self.node_ranges(m[4])
                dst_ranges[4] += v4
                dst_ranges[6] += v6
        port_boxes, other = [], []
        for pp in rule.ip:
            for proto in sorted(pp.protos):
                if proto in PORT_PROTOS:
                    port_boxes += [((proto, proto), p) for p in pp.ports]
                elif proto not in ICMP:
                    other.append(proto)
        via = None
        if rule.via:
            via = 0
            for tag in rule.via:
                via |= self._tag_masks.get(tag, 0)
        return _RuleData(rule, src_mask, dst_mask,
                         {f: merge_ranges(v) for f, v in src_ranges.items()},
                         {f: merge_ranges(v) for f, v in dst_ranges.items()},
                         {f: merge_ranges(v) for f, v in dst_cidr.items()},
                         "autogroup:self" in rule.dst, port_boxes, sorted(set(other)), via)

    def _internet_allowed(self, i: int, exit_node: int) -> bool:
        """A rule lets node i reach the internet, through this exit node (via allowing)."""
        bit = 1 << i
        return any(rd.any_src & bit and ("*" in rd.rule.dst or "autogroup:internet" in rd.rule.dst)
                   and (rd.via is None or rd.via >> exit_node & 1) for rd in self.rules)

    def _check_exit_use(self) -> None:
        for i, node in enumerate(self.nodes):
            target = node.use_exit_node
            if target is None:
                continue
            if target not in self.mesh.nodes:
                self._mesh_error(node.name, "use_exit_node", f'no node "{target}"')
            elif target not in self.index:
                self._mesh_error(node.name, "use_exit_node", f'exit node "{target}" has expired')
            elif not self.mesh.nodes[target].advertise_exit_node:
                self._mesh_error(node.name, "use_exit_node",
                                 f'"{target}" does not offer itself as exit node',
                                 f"set advertise_exit_node: true on {target}")
            # Approval and the internet grant come from the policy, which must always be
            # able to take access away (a deny-all policy in an incident must apply): losing
            # either stops the node using the exit node, with a warning, not a failed run.
            elif self.index[target] not in self.exits:
                self.exit_blocked.add(i)
                self._warnings.append(f'{node.name}: exit node "{target}" is not approved; '
                                     "its internet traffic stays local")
            elif not self._internet_allowed(i, self.index[target]):
                self.exit_blocked.add(i)
                self._warnings.append(f"{node.name}: policy does not grant it "
                                     f'autogroup:internet, so it does not use exit node "{target}"')

    # Per host ------------------------------------------------------------------------
    @functools.cached_property
    def _rules_naming(self) -> dict[int, list[int]]:
        """Node -> the rules that name it as source or destination (autogroup:self names
        everyone), in policy order."""
        out: dict[int, list[int]] = defaultdict(list)
        everyone = range(len(self.nodes))
        for k, rd in enumerate(self.rules):
            for i in everyone if rd.self_dst else bits(rd.any_src | rd.any_dst):
                out[i].append(k)
        return out

    def host(self, name: str) -> HostOutput:
        """Everything one host needs; costs O(rules x nodes), not O(nodes^2)."""
        h = self.index[name]
        bit = 1 << h
        node = self.nodes[h]
        fwd: dict[str, Grouped] = defaultdict(lambda: defaultdict(list))
        # What the host's inbound and outbound sets depend on. Hosts with the same role
        # (same tags, same groups) have the same signatures and share one computation.
        in_sig: list[tuple] = []
        out_sig: list[tuple] = []
        peers = 0
        routes_wanted: dict[int, set[tuple[int, int, int]]] = {}  # router -> (f, lo, hi)
        # Grants with via: this host sends their destinations through the via routers only.
        via_wanted: dict[int, set[tuple[int, int, int]]] = {}
        via_taken: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        my_routes = self.routes.get(h)
        is_exit = h in self.exits
        # Most rules do not name this host; routers and exit nodes forward for the rest too.
        ks = range(len(self.rules)) if my_routes or is_exit else self._rules_naming.get(h, ())
        for k in ks:
            rd = self.rules[k]
            srcs = rd.src_ranges
            if rd.self_dst and not node.tagged and node.owner in self.user_mask:
                mine = self.user_mask[node.owner]
                if rd.any_src & bit:
                    peers |= mine
                    out_sig.append((k, "self", mine))
                senders = rd.any_src & mine
                if senders:
                    peers |= senders
                    in_sig.append((k, "self", senders))
            if rd.self_only:
                continue
            # The rule's other destinations (autogroup:self may stand beside tags, users...).
            # As destination: the rule names this host (filters on arrival).
            dfams = tuple(f for f in FAMILIES if rd.dst_mask[f] & bit)
            if dfams:
                peers |= rd.any_src
                in_sig.append((k, dfams))
            # As source: what this host may send (filters on departure).
            sfams = tuple(f for f in FAMILIES if rd.src_mask[f] & bit)
            if sfams:
                peers |= rd.any_dst
                out_sig.append((k, sfams))
                for f in sfams:
                    self._want_dst_routes(routes_wanted, via_wanted, via_taken, h, f, rd)
            # Subnet sources ("*" or CIDRs) arriving through a router.
            for f in dfams:
                self._want_routes(routes_wanted, h, f, srcs[f])
            # This host forwards for its approved routes and, as exit node, the internet.
            carries = rd.via is None or bool(rd.via & bit)  # not steered elsewhere by via
            to_internet = carries and is_exit and ("*" in rd.rule.dst
                                                   or "autogroup:internet" in rd.rule.dst)
            for f in FAMILIES:
                if carries and my_routes and (dsts := clip(rd.dst_cidr[f], my_routes[f])):
                    peers |= rd.src_mask[f]
                    self._forward(fwd, rd, f, srcs[f], dsts)
                    # Sources in another router's subnets arrive through that router.
                    self._want_routes(routes_wanted, h, f, srcs[f])
                if to_internet:
                    # Peers of an exit node are only the nodes that chose it (below).
                    self._forward(fwd, rd, f, srcs[f], self.internet[f])
                if my_routes:
                    lan_srcs = clip(srcs[f], my_routes[f])
                    if lan_srcs:
                        peers |= rd.any_dst
                        self._forward(fwd, rd, f, lan_srcs, rd.dst_ranges[f])
                        # Subnet to subnet: destinations behind another router.
                        self._want_dst_routes(routes_wanted, via_wanted, via_taken, h, f, rd)
        if via_wanted:
            routes_wanted = {r: kept for r, rs in routes_wanted.items() if (kept := {
                (f, lo2, hi2) for f, lo, hi in rs for lo2, hi2 in subtract([(lo, hi)],
                                                                           via_taken[f])})}
            for r, rs in via_wanted.items():
                routes_wanted.setdefault(r, set()).update(rs)
        sets = {**self._direction_sets("in", tuple(in_sig)),
                **self._direction_sets("out", tuple(out_sig)),
                **{k: tuple(disjoint_grouped(v)) for k, v in fwd.items() if v}}
        sets = dict(sorted(sets.items()))
        elements = sum(map(len, sets.values()))
        if elements > limits.MAX_HOST_ELEMENTS:
            raise InputError([Problem(
                str(self.policy.path), 0, 0, "", f"host {name} would get {elements} filter "
                f"elements, more than the limit of {limits.MAX_HOST_ELEMENTS}",
                "write port ranges (1000-2000) instead of long lists of single ports, or "
                "group sources and destinations by tag")])
        # A router's clients are peers of the router.
        for r in routes_wanted:
            peers |= 1 << r
        peers |= self.exit_users.get(name, 0)
        exit_idx = (self.index.get(node.use_exit_node)
                    if node.use_exit_node and h not in self.exit_blocked else None)
        if exit_idx is not None:
            peers |= 1 << exit_idx
        peers &= ~bit

        # Hosts in the same situation (same site, behind NAT or not) see a peer the same way
        # and share one entry.
        situation = (node.site, node.lan_address is not None, node.endpoint is not None,
                     name if node.relay else None)
        out_peers = []
        for p in bits(peers):
            routes = tuple(sorted(routes_wanted[p])) if p in routes_wanted else ()
            key = (p, routes, p == exit_idx, situation)
            peer = self._peer_cache.get(key)
            if peer is None:
                peer = self._peer_cache[key] = self._make_peer(h, p, routes, p == exit_idx)
            if peer.connection == "none":
                self._unreachable(name, peer.name)
                continue
            out_peers.append(peer)
        visible = [name, *(p.name for p in out_peers)]
        names = [self._name_entry(n, 4) for n in visible] + [self._name_entry(n, 6)
                                                             for n in visible]
        routes = [str(r) for r in node.advertise_routes
                  if my_routes and in_ranges(int(r.network_address), my_routes[r.version])]
        relayed = [p for p in out_peers if p.connection == "relay"]
        clients = self._relayed.get(name, set()) if node.relay else set()
        hop = self._hop(name, relayed, clients) if (relayed or clients) else None
        # A session carried inside a hop tunnel loses that tunnel's overhead (80 bytes).
        mtu = self.net.mtu - 80 if relayed else self.net.mtu
        return HostOutput(name, node, self.alloc[name].ipv4, self.alloc[name].ipv6,
                          node.listen_port or self.net.listen_port, out_peers, sets, routes,
                          is_exit, bool(routes) or is_exit or bool(clients), names, mtu, hop,
                          snat=is_exit or (bool(routes) and node.route_snat),
                          uses_exit_node=node.use_exit_node if exit_idx is not None else None)

    def _unreachable(self, a: str, b: str) -> None:
        """A pair policy relates that can never connect gets no peer entry (warned once)."""
        i, j = sorted((self.index[a], self.index[b]))
        bit = i * len(self.names) + j
        if not self._dead_bits:
            self._dead_bits = bytearray((len(self.names) ** 2 + 7) // 8)
        if self._dead_bits[bit >> 3] & (1 << (bit & 7)):
            return
        self._dead_bits[bit >> 3] |= 1 << (bit & 7)
        self._dead_count += 1
        bisect.insort(self._dead_first, (self.names[i], self.names[j]))
        del self._dead_first[10:]

    @property
    def warnings(self) -> list[str]:
        """Warnings so far; compiling hosts adds the pairs that can never connect."""
        if not self._dead_count:
            return list(self._warnings)
        shown = ", ".join(f"{a} and {b}" for a, b in self._dead_first)
        more = self._dead_count - len(self._dead_first)
        return [*self._warnings,
                f"{self._dead_count} pair(s) may talk by policy but can never connect (both "
                f"behind NAT, no relay can carry them), so they get no peer entry: {shown}"
                + (f" and {more} more" if more else "") + " (add a node with relay: true and "
                "a public endpoint, give one of each pair an endpoint, or put both on one "
                "site with a lan_address)"]

    def hop_address(self, name: str) -> ipaddress.IPv6Address:
        """A node's address inside hop tunnels: the relay pool plus its mesh IPv6 host part."""
        pool = self.net.relay_pool
        return pool.network_address + (int(self.alloc[name].ipv6) & (pool.num_addresses - 1))

    @functools.cached_property
    def _relayed(self) -> dict[str, set[tuple[str, str]]]:
        """relay -> the node pairs it carries (both unreachable, related by policy)."""
        out: dict[str, set[tuple[str, str]]] = defaultdict(set)
        if not self.relays:
            return out
        for name, node in zip(self.names, self.nodes, strict=True):
            if node.endpoint:
                continue  # reachable nodes need no relay, and relays are all reachable
            for p in self.host(name).peers:
                if p.connection == "relay":
                    out[p.relay].add(tuple(sorted((name, p.name))))
        return out

    def _hop(self, name: str, relayed: list[Peer], clients: set[tuple[str, str]]) -> Hop:
        iface = self.net.hop_interface
        address = f"{self.hop_address(name)}/{self.net.relay_pool.prefixlen}"
        if clients:  # this node is a relay: every node it carries for is a peer
            members = sorted({n for pair in clients for n in pair})
            peers = [HopPeer(n, self.alloc[n].public_key, [f"{self.hop_address(n)}/128"], None,
                             None) for n in members]
            pairs = []
            for a, b in sorted(clients):
                for src, dst in ((a, b), (b, a)):
                    port = self.mesh.nodes[dst].listen_port or self.net.listen_port
                    pairs.append((str(self.hop_address(src)), str(self.hop_address(dst)), port))
            return Hop(iface, address, self.net.relay_port, peers, pairs)
        by_relay: dict[str, list[str]] = defaultdict(list)
        for p in relayed:
            by_relay[p.relay].append(f"{self.hop_address(p.name)}/128")
        peers = []
        for relay, allowed in sorted(by_relay.items()):
            host = parse_endpoint(self.mesh.nodes[relay].endpoint)[0]
            peers.append(HopPeer(relay, self.alloc[relay].public_key,
                                 [f"{self.hop_address(relay)}/128", *sorted(allowed)],
                                 endpoint_text(host, self.net.relay_port),
                                 self.net.keepalive or 25))
        return Hop(iface, address, None, peers)

    def _direction_sets(self, direction: str, signature: tuple) -> dict[str, list[Box]]:
        """A host's inbound or outbound sets, computed once per distinct signature."""
        cache = self._set_cache.setdefault(direction, {})
        if signature in cache:
            return cache[signature]
        boxes: dict[str, Grouped] = defaultdict(lambda: defaultdict(list))
        for k, *how in signature:
            rd = self.rules[k]
            if how[0] == "self":
                v4, v6 = self.node_ranges(how[1])
                self._direction(direction, boxes, rd, {4: v4, 6: v6}, FAMILIES)
            else:
                ranges = rd.src_ranges if direction == "in" else rd.dst_ranges
                self._direction(direction, boxes, rd, ranges, how[0])
        cache[signature] = {k: out for k, v in boxes.items() if (out := tuple(disjoint_grouped(v)))}
        return cache[signature]

    @staticmethod
    def _direction(direction: str, boxes, rd: _RuleData, ranges, families) -> None:
        """Elements of the ``in`` sets (ranges are sources) or ``out`` sets (destinations)."""
        for f in families:
            _add_rule(boxes, f"{direction}{f}", (), ranges[f], rd)

    def _want_routes(self, wanted: dict[int, set], h: int, f: int, ranges) -> None:
        """Ask for every other router's routes of family ``f`` that meet ``ranges``."""
        if not ranges:
            return
        for r, fams in self.client_routes().items():
            if r != h:
                for lo, hi in fams[f]:
                    if clip([(lo, hi)], ranges):
                        wanted.setdefault(r, set()).add((f, lo, hi))

    def _want_dst_routes(self, wanted, via_wanted, via_taken, h: int, f: int,
                         rd: _RuleData) -> None:
        """Routes to a rule's destinations: through their carriers, or for a grant with via,
        through the via routers only, for exactly the destinations (per viewer, as in
        Tailscale: other sources keep the usual router)."""
        if rd.via is None:
            self._want_routes(wanted, h, f, rd.dst_cidr[f])
            return
        for r, fams in self._via_carriers(rd.via).items():
            if r != h:
                for part in clip(fams[f], rd.dst_cidr[f]):
                    via_wanted.setdefault(r, set()).add((f, *part))
                    via_taken[f] = merge_ranges([*via_taken[f], part])

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _via_carriers(self, via: int) -> dict[int, dict[int, list]]:
        return self._carriers({i: nets for i, nets in self._approved_of.items() if via >> i & 1})

    @staticmethod
    def _forward(boxes, rd: _RuleData, f: int, srcs, dsts) -> None:
        for d in dsts:
            _add_rule(boxes, f"fwd{f}", (d,), srcs, rd)

    def _make_peer(self, h: int, p: int, routes, is_exit: bool) -> Peer:
        me, other = self.nodes[h], self.nodes[p]
        name = other.name
        allowed = list(self._host_routes(name))
        for _f, lo, hi in sorted(routes):
            for net in ipaddress.summarize_address_range(ipaddress.ip_address(lo),
                                                         ipaddress.ip_address(hi)):
                allowed.append(str(net))
        if is_exit:
            allowed += ["0.0.0.0/0", "::/0"]
        roles = self._roles(p)
        conn, endpoint, relay = self.connection(me, other)
        if conn == "relay":
            # The end-to-end session runs to the peer's hop address, inside the hop tunnel.
            port = other.listen_port or self.net.listen_port
            endpoint = endpoint_text(str(self.hop_address(name)), port)
        keepalive = self.net.keepalive if (conn == "direct" and not me.endpoint
                                           and self.net.keepalive) else None
        return Peer(name, self.alloc[name].public_key, allowed, endpoint, keepalive, conn,
                    relay, roles)

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _roles(self, p: int) -> list[str]:
        return [r for r, yes in (("router", p in self.routes), ("exit", p in self.exits),
                                 ("relay", self.nodes[p].relay)) if yes]

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _name_entry(self, name: str, family: int) -> tuple[str, tuple[str, str]]:
        addr = self.alloc[name].ipv4 if family == 4 else self.alloc[name].ipv6
        return str(addr), (name, f"{name}.{self.net.domain}")

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _host_routes(self, name: str) -> tuple[str, str]:
        return f"{self.alloc[name].ipv4}/32", f"{self.alloc[name].ipv6}/128"

    def connection(self, me: Node, other: Node) -> tuple[str, str | None, str | None]:
        """How two nodes reach each other, and the endpoint ``me`` uses for ``other``."""
        if me.site and me.site == other.site and other.lan_address and me.lan_address:
            port = other.listen_port or self.net.listen_port
            host = other.lan_address
            return "lan", (f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"), None
        if other.endpoint:
            return "direct", other.endpoint, None
        if me.endpoint:
            return "direct", None, None  # the other side dials in and keeps the path open
        relays = [n for n in self.relays if n.name not in (me.name, other.name)]
        if relays:
            pair_sites = {me.site, other.site} - {None}
            relays.sort(key=lambda n: (n.site not in pair_sites, n.name))
            return "relay", None, relays[0].name
        return "none", None, None

    def compile_all(self) -> dict[str, HostOutput]:
        with fewer_gc_passes():
            return {n: self.host(n) for n in self.names if self.mesh.nodes[n].managed}

    # Evaluation ----------------------------------------------------------------------
    def endpoint_of(self, text: str, family: int | None = None) -> Endpoint:
        """A node name or an IP address, as the evaluator sees it."""
        if text in self.index:
            node = self.nodes[self.index[text]]
            addr = self.alloc[text].ipv6 if family == 6 else self.alloc[text].ipv4
            return Endpoint(addr, node.name, node.owner, frozenset(node.tags))
        if text in self.policy.hosts:
            text = str(self.policy.hosts[text].network_address)
        addr = ipaddress.ip_address(text)
        i = self.by_addr.get((addr.version, int(addr)))
        if i is not None:
            node = self.nodes[i]
            return Endpoint(addr, node.name, node.owner, frozenset(node.tags))
        return Endpoint(addr)


@dataclass(frozen=True)
class Verdict:
    allow: bool
    rule: str | None = None
    line: int = 0


class Evaluator:
    """Decides single packets from identities, the way the policy reads, not from sets."""

    def __init__(self, comp: Compiler):
        self.c = comp
        self.policy = comp.policy

    def src_matches(self, sel: str, ep: Endpoint) -> bool:
        if sel == "*":
            if ep.node is not None or ep.addr is None:
                return True  # every node, and any identity (a user with no device yet)
            f = ep.addr.version
            return in_ranges(int(ep.addr), self.c.pools[f] + self.c.all_routes[f])
        return self._identity_or_prefix(sel, ep)

    def _identity_or_prefix(self, sel: str, ep: Endpoint) -> bool:
        net = self.c._prefix(sel)
        if net is not None:
            return ep.addr is not None and ep.addr.version == net.version and ep.addr in net
        if ep.node is None and ep.user is None and not ep.tags:
            return False
        if sel.startswith("tag:"):
            return sel in ep.tags
        if sel == "autogroup:tagged":
            return bool(ep.tags)
        if ep.tags or ep.user is None:
            return False
        if sel.startswith("group:"):
            return ep.user in self.policy.groups.get(sel, ())
        if sel == "autogroup:member":
            return True
        return sel == ep.user

    def dst_matches(self, sel: str, ep: Endpoint, src: Endpoint) -> bool:
        if sel == "*":
            return True
        if sel == "autogroup:internet":
            return (ep.node is None and ep.addr is not None
                    and in_ranges(int(ep.addr), self.c.internet[ep.addr.version]))
        if sel == "autogroup:self":
            return (ep.node is not None and not ep.tags and not src.tags and src.user is not None
                    and ep.user == src.user)
        return self._identity_or_prefix(sel, ep)

    def check(self, src: Endpoint, dst: Endpoint, proto: int, port: int | None) -> Verdict:
        if (src.addr is not None and dst.addr is not None
                and src.addr.version != dst.addr.version):
            return Verdict(False)
        for rd in self.c.rules:
            r = rd.rule
            if not any(self.src_matches(s, src) for s in r.src):
                continue
            if not any(self.dst_matches(d, dst, src) for d in r.dst):
                continue
            if proto in ICMP:
                return Verdict(True, r.origin, r.line)  # echo follows any relation
            for pp in r.ip:
                if proto in pp.protos and (proto not in PORT_PROTOS or any(
                        lo <= (port or 0) <= hi for lo, hi in pp.ports)):
                    return Verdict(True, r.origin, r.line)
        return Verdict(False)


def _add_rule(boxes: dict[str, Grouped], name: str, head: Box, addresses, rd: _RuleData) -> None:
    """Add what ``rd`` allows for ``addresses`` (the sets' first dimension) to the three sets
    ``ping_<name>``, ``<name>`` (ports) and ``<name>p`` (other protocols), grouped by what
    follows the addresses (``head``, then the ports or protocol): one rule's address list
    serves all of its ports."""
    if not addresses:
        return
    boxes[f"ping_{name}"][head].append(addresses)
    ports = boxes[name]
    for pp in rd.port_boxes:
        ports[(*head, *pp)].append(addresses)
    protos = boxes[f"{name}p"]
    for p in rd.other_protos:
        protos[(*head, (p, p))].append(addresses)


@contextlib.contextmanager
def fewer_gc_passes():
    """Compiling a large mesh allocates millions of small tuples that form no cycles, and
    CPython's default (a collection every 700 allocations) spends a tenth of the time
    scanning them: collect every 100,000 while compiling, as batch tools commonly do."""
    old = gc.get_threshold()
    gc.set_threshold(100_000, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["Compiler", "Endpoint", "Evaluator", "HostOutput", "Peer", "Verdict",
           "endpoint_text", "fewer_gc_passes"]


# How long before network.key_max_age_days a key's age is announced.
KEY_AGE_NOTICE_DAYS = 14


def key_age_warnings(mesh: Mesh, alloc: dict[str, Allocation], names: list[str],
                     today: dt.date) -> list[str]:
    """Keys past network.key_max_age_days, and keys that reach it within two weeks."""
    limit = mesh.network.key_max_age_days
    out = []
    for name in names if limit else ():
        since = alloc[name].key_date
        if since is None or not mesh.nodes[name].managed:
            continue
        age = (today - since).days
        fix = f"rotate it: ansible-playbook playbooks/rotate.yml -l {name}"
        if age >= limit:
            out.append(f"{name}: its key is {age} days old, past network.key_max_age_days "
                       f"({limit}); {fix}")
        elif age >= limit - KEY_AGE_NOTICE_DAYS:
            due = since + dt.timedelta(days=limit)
            out.append(f"{name}: its key reaches network.key_max_age_days ({limit}) on {due}; "
                       f"{fix}")
    return out
