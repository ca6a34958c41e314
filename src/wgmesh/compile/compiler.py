"""Compile a mesh and its policy into every host's peers, paths, filters and names.

The mesh is resolved once (``Resolution``, which the compiler holds: identities, approvals,
rules); each host's output (``hostoutput``) is then one pass over the rules that name it, so
one host costs O(rules x nodes) and the whole mesh costs time proportional to what it
outputs. Which peers a host needs (through a subnet router or exit node too) is decided
here, how it reaches each in ``paths``; the filter sets come from ``filters``; ``evaluate``
decides the same questions from identities, independently of the sets, so tests can check
one against the other.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from wgmesh import limits
from wgmesh.compile.evaluate import Evaluator
from wgmesh.compile.filters import (
    FilterSets,
    RuleData,
    disjoint_sets,
    forward,
    new_boxes,
    restrict_port,
)
from wgmesh.compile.hostoutput import Agent, HostOutput, Peer, Resolver
from wgmesh.compile.paths import Paths
from wgmesh.compile.resolve import Resolution
from wgmesh.errors import InputError, Problem
from wgmesh.intervals import (
    EVERYTHING,
    FAMILIES,
    bits,
    clip,
    in_ranges,
    merge_ranges,
    subtract,
)
from wgmesh.lock import Allocation
from wgmesh.mesh import Mesh
from wgmesh.policy import Policy


@dataclass
class Demands:
    """What the policy's rules ask of one host (Compiler._demands)."""

    peers: int  # bit mask of the nodes it needs as peers
    in_sig: tuple  # what its inbound sets depend on (shared by hosts of the same role)
    out_sig: tuple
    fwd: object  # the boxes it forwards (filters.new_boxes)
    routes_wanted: dict[int, set[tuple[int, int, int]]]  # router -> (family, lo, hi)


class Compiler:
    """Per host: peers, the paths to them, filter sets, names and forwarding, derived from
    the mesh's one ``Resolution`` (``res``: identities, approvals, rules)."""

    def __init__(self, mesh: Mesh, policy: Policy, alloc: dict[str, Allocation],
                 today=None):
        self.res = Resolution(mesh, policy, alloc, today)
        self.paths = Paths(self.res)
        # Lighthouses serve only when a relay carries the pairs they help upgrade: a pair
        # whose punch fails must still have its relay.
        self.lighthouses = ([i for i, n in enumerate(self.res.nodes) if n.lighthouse and n.managed]
                            if self.paths.relays else [])
        if self.paths.relays:
            self.paths.check_hop_addresses()
        self.filter_sets = FilterSets(self.res)
        self._peer_cache: dict[tuple, Peer] = {}
        # Pairs that can never connect: a bitmap over node pairs (a large NAT-heavy mesh has
        # millions), their count, and the first few by name for the warning.
        self._dead_bits = bytearray()
        self._dead_count = 0
        self._dead_first: list[tuple[str, str]] = []
        self._dns_unreached: list[str] = []
        # Node -> the split domains it resolves through the mesh (computed once, here).
        self.dns: dict[int, dict[str, list[str]]] = {}
        if self.res.net.split_dns:
            self._check_split_dns()
        # Device -> the mesh resolvers' addresses its policy lets it ask (UDP 53).
        self.resolvers = [i for i, n in enumerate(self.res.nodes) if n.resolver]
        self._dns_servers: dict[int, list[tuple[int, str]]] = {}
        self._no_resolver: list[str] = []
        if self.resolvers:
            self._find_dns_servers()
        if self.res.problems:
            raise InputError(self.res.problems)

    def _split_dns(self, h: int, ev: Evaluator) -> dict[str, list[str]]:
        """The split domains node h resolves through the mesh: those whose nameservers the
        policy lets it reach on UDP port 53 (the ones it may reach, in mesh.yml's order)."""
        me = {f: self.res.endpoint_of(self.res.names[h], f) for f in FAMILIES}
        out = {}
        for domain, servers in self.res.net.split_dns:
            ok = [str(a) for a in servers
                  if ev.check(me[a.version], self.res.endpoint_of(str(a)), 17, 53).allow]
            if ok:
                out[domain] = ok
        return out

    def _check_split_dns(self) -> None:
        """Each node's split domains; a split domain no node may reach is a mistake,
        reported at compile; nodes that may not reach one are named in a warning (they keep
        resolving it as before)."""
        reached: set[str] = set()
        ev = Evaluator(self.res)
        for h, name in enumerate(self.res.names):
            got = self.dns[h] = self._split_dns(h, ev)
            reached |= set(got)
            if self.res.nodes[h].managed:
                self._dns_unreached += [f"{name} ({d})" for d, _ in self.res.net.split_dns
                                        if d not in got]
        for domain, servers in self.res.net.split_dns:
            if domain not in reached:
                line, col = self.res.mesh.where_network("split_dns", domain)
                self.res.problems.append(Problem(
                    str(self.res.mesh.path), line, col, f"network.split_dns.{domain}",
                    f"no node may reach its nameservers ({', '.join(map(str, servers))}) on "
                    "UDP port 53", f'allow it in the policy, e.g. {{"action": "accept", '
                    f'"src": ["group:..."], "dst": ["{servers[0]}:53"]}}'))

    def _find_dns_servers(self) -> None:
        """Each device's mesh resolvers, per address family the policy lets it ask on UDP
        port 53; devices that may ask none are named in a warning (names do not resolve
        there)."""
        ev = Evaluator(self.res)
        for h, node in enumerate(self.res.nodes):
            if node.managed:
                continue
            got = [(r, str(self.res.endpoint_of(self.res.names[r], f).addr))
                   for r in self.resolvers for f in FAMILIES
                   if ev.check(self.res.endpoint_of(self.res.names[h], f),
                               self.res.endpoint_of(self.res.names[r], f), 17, 53).allow]
            if got:
                self._dns_servers[h] = got
            else:
                self._no_resolver.append(self.res.names[h])

    def _resolver(self, h: int) -> Resolver:
        """Split domains: those whose nameservers the node may reach through the mesh, or
        that sit in the prefixes it routes (its own LAN, reached without the mesh)."""
        name = self.res.names[h]
        records = [(n, f"{n}.{self.res.net.domain}", str(self.res.alloc[n].ipv4),
                    str(self.res.alloc[n].ipv6)) for n in sorted(self.res.names)]
        mine = self.res.approved.get(h, ())
        split = dict(self.dns.get(h) or {})
        for domain, servers in self.res.net.split_dns:
            local = [str(a) for a in servers if any(a in net for net in mine)]
            if local and domain not in split:
                split[domain] = local
        return Resolver((str(self.res.alloc[name].ipv4), str(self.res.alloc[name].ipv6)),
                        self.res.net.domain, records, split)

    def host(self, name: str, filters: bool = True) -> HostOutput:
        """Everything one host needs; costs O(rules x nodes), not O(nodes^2). Without
        ``filters`` its sets are left empty (peers and paths only, as `wgmesh plan` needs).
        Three phases: what the rules ask of this host (_demands), its filter sets
        (_host_sets), its peers and the paths to them (_host_peers)."""
        h = self.res.index[name]
        node = self.res.nodes[h]
        my_routes = self.res.routes.get(h)
        is_exit = h in self.res.exits
        d = self._demands(h)
        sets, ssh = self._host_sets(h, d, filters)
        out_peers, unreachable, exit_idx, situation = self._host_peers(h, d)
        visible = [name, *(p.name for p in out_peers)]
        names = [self._name_entry(n, 4) for n in visible] + [self._name_entry(n, 6)
                                                             for n in visible]
        routes = [str(r) for r in node.advertise_routes
                  if my_routes and in_ranges(int(r.network_address), my_routes[r.version])]
        relayed = [p for p in out_peers if p.connection == "relay"]
        agent = self._agent(h, relayed, out_peers, situation) if self.lighthouses else None
        clients = self._relayed.get(name, set()) if node.relay else set()
        hop = self.paths.hop(name, relayed, clients) if (relayed or clients) else None
        # A session carried inside a hop tunnel loses that tunnel's overhead (80 bytes).
        mtu = self.res.net.mtu - 80 if relayed else self.res.net.mtu
        return HostOutput(name, node, self.res.alloc[name].ipv4, self.res.alloc[name].ipv6,
                          node.listen_port or self.res.net.listen_port, out_peers, sets, routes,
                          is_exit, bool(routes) or is_exit or bool(clients), names, mtu, hop,
                          snat=is_exit or (bool(routes) and node.route_snat),
                          uses_exit_node=node.use_exit_node if exit_idx is not None else None,
                          unreachable=tuple(unreachable), ssh=ssh,
                          dns=(self.dns.get(h) or None) if node.managed else None,
                          agent=agent,
                          resolver=self._resolver(h) if node.resolver else None,
                          # Only resolvers it has a peer entry for (not behind NAT both).
                          dns_servers=tuple(a for r, a in self._dns_servers.get(h, ())
                                            if any(p.name == self.res.names[r]
                                                   for p in out_peers)))


    def _demands(self, h: int) -> Demands:
        """What the policy's rules ask of host ``h``: the peers it needs, the signatures of
        its inbound and outbound sets, what it forwards, and the routes it needs from which
        router."""
        bit = 1 << h
        node = self.res.nodes[h]
        fwd = new_boxes()
        # What the host's inbound and outbound sets depend on. Hosts with the same role
        # (same tags, same groups) have the same signatures and share one computation.
        in_sig: list[tuple] = []
        out_sig: list[tuple] = []
        peers = 0
        routes_wanted: dict[int, set[tuple[int, int, int]]] = {}  # router -> (f, lo, hi)
        # Grants with via: this host sends their destinations through the via routers only.
        via_wanted: dict[int, set[tuple[int, int, int]]] = {}
        via_taken: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        my_routes = self.res.routes.get(h)
        is_exit = h in self.res.exits
        # Most rules do not name this host; routers and exit nodes forward for the rest too.
        ks = (range(len(self.res.rules)) if my_routes or is_exit
              else self.res.rules_naming.get(h, ()))
        for k in ks:
            rd = self.res.rules[k]
            srcs = rd.src_ranges
            if rd.self_dst and not node.tagged and node.owner in self.res.user_mask:
                mine = self.res.user_mask[node.owner]
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
            to_internet = carries and is_exit and rd.to_internet
            for f in FAMILIES:
                if carries and my_routes and (dsts := clip(rd.dst_cidr[f], my_routes[f])):
                    peers |= rd.src_mask[f]
                    forward(fwd, rd, f, srcs[f], dsts)
                    # Sources in another router's subnets arrive through that router.
                    self._want_routes(routes_wanted, h, f, srcs[f])
                if to_internet:
                    # Peers of an exit node are only the nodes that chose it (below).
                    forward(fwd, rd, f, srcs[f], clip(rd.dst_ranges[f], self.res.internet[f]))
                if my_routes:
                    lan_srcs = clip(srcs[f], my_routes[f])
                    if lan_srcs:
                        peers |= rd.any_dst
                        forward(fwd, rd, f, lan_srcs, rd.dst_ranges[f])
                        # Subnet to subnet: destinations behind another router.
                        self._want_dst_routes(routes_wanted, via_wanted, via_taken, h, f, rd)
        if via_wanted:
            routes_wanted = {r: kept for r, rs in routes_wanted.items() if (kept := {
                (f, lo2, hi2) for f, lo, hi in rs for lo2, hi2 in subtract([(lo, hi)],
                                                                           via_taken[f])})}
            for r, rs in via_wanted.items():
                routes_wanted.setdefault(r, set()).update(rs)
        return Demands(peers, tuple(in_sig), tuple(out_sig), fwd, routes_wanted)

    def _host_sets(self, h: int, d: Demands, filters: bool
                   ) -> tuple[dict, list | None]:
        """Host ``h``'s filter sets (none without ``filters``) and, where it runs SSH policy,
        who may log in as whom."""
        name, node, bit = self.res.names[h], self.res.nodes[h], 1 << h
        sets = {**self.filter_sets.direction("in", d.in_sig),
                **self.filter_sets.direction("out", d.out_sig),
                **disjoint_sets(d.fwd)} if filters else {}
        ssh = None
        if self.res.ssh_hosts and filters:
            self._restrict_ssh(h, sets)
        if self.res.ssh_hosts & bit and node.managed:
            ssh = [(self.res.names[s], str(self.res.alloc[self.res.names[s]].ipv4),
                    str(self.res.alloc[self.res.names[s]].ipv6), *self.res.ssh_logins(h, s))
                   for s in bits(self.res.ssh_sources(h))]
        sets = dict(sorted((k, v) for k, v in sets.items() if v))
        elements = sum(map(len, sets.values()))
        if elements > limits.MAX_HOST_ELEMENTS:
            raise InputError([Problem(
                str(self.res.policy.path), 0, 0, "", f"host {name} would get {elements} filter "
                f"elements, more than the limit of {limits.MAX_HOST_ELEMENTS}",
                "write port ranges (1000-2000) instead of long lists of single ports, or "
                "group sources and destinations by tag")])
        return sets, ssh

    def _host_peers(self, h: int, d: Demands) -> tuple[list[Peer], list[str], int | None, tuple]:
        """Host ``h``'s peers and the path to each (unreachable ones left out and named), the
        exit node it uses, and its situation (which peers see it the same way)."""
        name, node, bit = self.res.names[h], self.res.nodes[h], 1 << h
        peers, routes_wanted = d.peers, d.routes_wanted
        # A router's clients are peers of the router.
        for r in routes_wanted:
            peers |= 1 << r
        peers |= self.res.exit_users.get(name, 0)
        exit_idx = (self.res.index.get(node.use_exit_node)
                    if node.use_exit_node and h not in self.res.exit_blocked else None)
        if exit_idx is not None:
            peers |= 1 << exit_idx
        peers &= ~bit

        # Hosts in the same situation (same site, behind NAT or not) see a peer the same way
        # and share one entry.
        situation = (node.site, node.lan_address is not None, node.endpoint is not None,
                     name if node.relay else None)
        out_peers = []
        unreachable: list[str] = []
        for p in bits(peers):
            routes = tuple(sorted(routes_wanted[p])) if p in routes_wanted else ()
            key = (p, routes, p == exit_idx, situation)
            peer = self._peer_cache.get(key)
            if peer is None:
                peer = self._peer_cache[key] = self._make_peer(h, p, routes, p == exit_idx)
            if peer.connection == "none":
                self._unreachable(name, peer.name)
                unreachable.append(peer.name)
                continue
            out_peers.append(peer)
        return out_peers, unreachable, exit_idx, situation

    @functools.cached_property
    def _punchers(self) -> dict[str, list[str]]:
        """Node -> its relayed peers: every pair a relay carries may try a direct path."""
        out: dict[str, list[str]] = defaultdict(list)
        for pairs in self._relayed.values():
            for a, b in pairs:
                out[a].append(b)
                out[b].append(a)
        return {n: sorted(set(ps)) for n, ps in out.items()}

    def _agent(self, h: int, relayed: list[Peer], out_peers: list[Peer],
               situation: tuple) -> Agent | None:
        """The host's NAT traversal part. Lighthouses and the nodes behind NAT they serve
        become peers of each other (their filters pass only the agent port between them),
        added to ``out_peers`` in place."""
        node, name = self.res.nodes[h], self.res.names[h]
        if not node.managed:
            return None
        extra: list[int] = []
        lighthouses, punch, clients = [], [], {}
        if not node.endpoint and relayed:
            for lh in self.lighthouses:
                if lh != h:
                    extra.append(lh)
                    other = self.res.names[lh]
                    lighthouses.append((other, str(self.res.alloc[other].ipv4),
                                        self.res.alloc[other].public_key or ""))
            if lighthouses:
                punch = [(p.name, p.public_key or "", str(self.res.alloc[p.name].ipv4),
                          p.endpoint or "", p.relay or "") for p in relayed if p.public_key]
        if node.lighthouse:
            keys = {n: self.res.alloc[n].public_key for n in self._punchers}
            for client, peers in sorted(self._punchers.items()):
                if client != name and keys[client]:
                    extra.append(self.res.index[client])
                    clients[str(self.res.alloc[client].ipv4)] = (
                        client, keys[client], [keys[p] for p in peers if keys[p]])
        if not (punch or clients):
            return None
        have = {p.name for p in out_peers}
        for p in sorted(set(extra)):
            if self.res.names[p] in have:
                continue
            key = (p, (), False, situation)
            peer = self._peer_cache.get(key)
            if peer is None:
                peer = self._peer_cache[key] = self._make_peer(h, p, (), False)
            out_peers.append(peer)
        out_peers.sort(key=lambda p: self.res.index[p.name])
        return Agent(self.res.net.agent_port, str(self.res.alloc[name].ipv4), lighthouses, punch,
                     clients)

    def _restrict_ssh(self, h: int, sets: dict) -> None:
        """SSH over the mesh needs a network rule and an ssh rule, at both ends: on an
        SSH-managed host, port 22 admits only the sources ssh rules name; on every host,
        port 22 of SSH-managed hosts that do not let it in is taken out of what it sends."""
        bit, port = 1 << h, self.res.SSH_PORT
        if self.res.ssh_hosts & bit:
            allowed = self.res.node_ranges(self.res.ssh_sources(h))
            for f in FAMILIES:
                if sets.get(f"in{f}"):
                    sets[f"in{f}"] = restrict_port(sets[f"in{f}"], 6, port, allowed[f == 6])
        closed = self.res.ssh_hosts & ~self.res.ssh_targets(h) & ~bit
        if closed:
            ranges = self.res.node_ranges(closed)
            for f in FAMILIES:
                if sets.get(f"out{f}"):
                    sets[f"out{f}"] = restrict_port(sets[f"out{f}"], 6, port,
                                                    subtract(EVERYTHING[f], ranges[f == 6]))
        # A router or exit node forwards only what comes from outside the mesh, and no ssh
        # rule names such a source: it forwards nothing to port 22 of SSH-managed nodes.
        managed = self.res.node_ranges(self.res.ssh_hosts)
        for f in FAMILIES:
            if sets.get(f"fwd{f}"):
                sets[f"fwd{f}"] = restrict_port(sets[f"fwd{f}"], 6, port,
                                                subtract(EVERYTHING[f], managed[f == 6]), dim=1)

    def _unreachable(self, a: str, b: str) -> None:
        """A pair policy relates that can never connect gets no peer entry (warned once)."""
        i, j = sorted((self.res.index[a], self.res.index[b]))
        bit = i * len(self.res.names) + j
        if not self._dead_bits:
            self._dead_bits = bytearray((len(self.res.names) ** 2 + 7) // 8)
        if self._dead_bits[bit >> 3] & (1 << (bit & 7)):
            return
        self._dead_bits[bit >> 3] |= 1 << (bit & 7)
        self._dead_count += 1
        bisect.insort(self._dead_first, (self.res.names[i], self.res.names[j]))
        del self._dead_first[10:]

    @property
    def warnings(self) -> list[str]:
        """Warnings so far; compiling hosts adds the pairs that can never connect."""
        dns = ([f"split DNS: {len(self._dns_unreached)} node(s) may not reach the "
                f"nameservers of a split domain (UDP 53) and keep resolving it as before: "
                + ", ".join(self._dns_unreached[:10])
                + (" and more" if len(self._dns_unreached) > 10 else "")]
               if self._dns_unreached else [])
        if self._no_resolver:
            dns.append(f"mesh resolver: {len(self._no_resolver)} device(s) may not ask any "
                       "resolver (UDP 53), so mesh names do not resolve there: "
                       + ", ".join(self._no_resolver[:10])
                       + (" and more" if len(self._no_resolver) > 10 else "")
                       + ' (allow it, e.g. {"action": "accept", "src": ["group:..."], "proto": '
                       '"udp", "dst": ["<resolver>:53"]})')
        if not self._dead_count:
            return list(self.res.warnings) + dns
        shown = ", ".join(f"{a} and {b}" for a, b in self._dead_first)
        more = self._dead_count - len(self._dead_first)
        return [*self.res.warnings, *dns,
                f"{self._dead_count} pair(s) may talk by policy but can never connect (both "
                f"behind NAT, no relay can carry them; a device wgmesh does not manage cannot "
                f"use one), so they get no peer entry: {shown}"
                + (f" and {more} more" if more else "") + " (add a node with relay: true and "
                "a public endpoint, give one of each pair an endpoint, or put both on one "
                "site with a lan_address)"]

    @functools.cached_property
    def _relayed(self) -> dict[str, set[tuple[str, str]]]:
        """relay -> the node pairs it carries (both unreachable, related by policy)."""
        out: dict[str, set[tuple[str, str]]] = defaultdict(set)
        if not self.paths.relays:
            return out
        for name, node in zip(self.res.names, self.res.nodes, strict=True):
            if node.endpoint:
                continue  # reachable nodes need no relay, and relays are all reachable
            for p in self.host(name).peers:
                if p.connection == "relay":
                    out[p.relay].add(tuple(sorted((name, p.name))))
        return out

    def _want_routes(self, wanted: dict[int, set], h: int, f: int, ranges) -> None:
        """Ask for every other router's routes of family ``f`` that meet ``ranges``."""
        if not ranges:
            return
        for r, fams in self.res.carried.items():
            if r != h:
                for lo, hi in fams[f]:
                    if clip([(lo, hi)], ranges):
                        wanted.setdefault(r, set()).add((f, lo, hi))

    def _want_dst_routes(self, wanted, via_wanted, via_taken, h: int, f: int,
                         rd: RuleData) -> None:
        """Routes to a rule's destinations: through their carriers, or for a grant with via,
        through the via routers only, for exactly the destinations (per viewer, as in
        Tailscale: other sources keep the usual router)."""
        if rd.via is None:
            self._want_routes(wanted, h, f, rd.dst_cidr[f])
            return
        for r, fams in self.res.via_carriers(rd.via).items():
            if r != h:
                for part in clip(fams[f], rd.dst_cidr[f]):
                    via_wanted.setdefault(r, set()).add((f, *part))
                    via_taken[f] = merge_ranges([*via_taken[f], part])

    def _make_peer(self, h: int, p: int, routes, is_exit: bool) -> Peer:
        me, other = self.res.nodes[h], self.res.nodes[p]
        name = other.name
        allowed = list(self._host_routes(name))
        for f, lo, hi in sorted(routes):
            cls = ipaddress.IPv4Address if f == 4 else ipaddress.IPv6Address
            for net in ipaddress.summarize_address_range(cls(lo), cls(hi)):
                allowed.append(str(net))
        if is_exit:
            allowed += ["0.0.0.0/0", "::/0"]
        roles = self._roles(p)
        conn, endpoint, relay = self.paths.connection(me, other)
        keepalive = self.res.net.keepalive if (conn == "direct" and not me.endpoint
                                           and self.res.net.keepalive) else None
        return Peer(name, self.res.alloc[name].public_key, allowed, endpoint, keepalive, conn,
                    relay, roles)

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _roles(self, p: int) -> list[str]:
        return [r for r, yes in (("router", p in self.res.routes), ("exit", p in self.res.exits),
                                 ("relay", self.res.nodes[p].relay),
                                 ("lighthouse", p in self.lighthouses)) if yes]

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _name_entry(self, name: str, family: int) -> tuple[str, tuple[str, str]]:
        addr = self.res.alloc[name].ipv4 if family == 4 else self.res.alloc[name].ipv6
        return str(addr), (name, f"{name}.{self.res.net.domain}")

    @functools.cache  # noqa: B019 - one compiler per mesh; the cache dies with it
    def _host_routes(self, name: str) -> tuple[str, str]:
        return f"{self.res.alloc[name].ipv4}/32", f"{self.res.alloc[name].ipv6}/128"

    def compile_all(self) -> dict[str, HostOutput]:
        with fewer_gc_passes():
            return {n: self.host(n) for n in self.res.names if self.res.mesh.nodes[n].managed}


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
