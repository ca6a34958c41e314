"""What a mesh and its policy resolve to, before any host is compiled: identities (which
nodes each selector names, as bitmasks over nodes, and their address ranges), approvals
(routes, exit nodes, and which router carries each prefix), and each rule resolved once.

Everything here is checked across mesh.yml and the policy (tags their owners may assign, one
key per node, exit nodes that exist and are approved), and problems are collected, not
raised: ``Compiler`` adds its own checks and raises them all at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from wgmesh.errors import Problem
from wgmesh.intervals import (
    EVERYTHING,
    FAMILIES,
    INTERNET,
    bits,
    clip,
    merge_ranges,
    net_range,
    subtract,
)
from wgmesh.lock import Allocation, key_age_warnings
from wgmesh.mesh import Mesh, Node
from wgmesh.policy import ICMP, PORT_PROTOS, Policy, Rule
from wgmesh.selectors import Kind, Selector


@dataclass(frozen=True)
class Endpoint:
    """Who or what a packet comes from or goes to."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    node: str | None = None
    user: str | None = None
    tags: frozenset[str] = frozenset()


@dataclass
class RuleData:
    """One policy rule, resolved against the mesh."""

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
    to_internet: bool = False  # names "*" or autogroup:internet: what exit nodes carry
    any_src: int = field(init=False)  # nodes named as source, either family
    any_dst: int = field(init=False)
    self_only: bool = field(init=False)  # autogroup:self is the rule's only destination

    def __post_init__(self) -> None:
        self.any_src = self.src_mask[4] | self.src_mask[6]
        self.any_dst = self.dst_mask[4] | self.dst_mask[6]
        self.self_only = all(d.kind is Kind.SELF for d in self.rule.dst)


class Resolution:
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
        self.warnings: list[str] = list(policy.warnings)
        self.warnings += key_age_warnings(mesh, alloc, self.names, today)
        self._mask_cache: dict[Selector, dict[int, int]] = {}
        self._range_cache: dict[int, tuple[list, list]] = {}
        self._check_tags()
        self._check_unique_keys()
        self.approved, self.exits = self._approvals()
        # Router -> family -> approved ranges (what it forwards for), and what it carries for
        # its peers (the longest prefix wins, one primary per prefix).
        self.routes = {i: {f: merge_ranges(net_range(r) for r in nets if r.version == f)
                           for f in FAMILIES} for i, nets in self.approved.items()}
        self.carried = self._carriers(self.approved)
        self.user_mask = self._user_masks()
        self.exit_users: dict[str, int] = defaultdict(int)
        for i, n in enumerate(self.nodes):
            if n.use_exit_node:
                self.exit_users[n.use_exit_node] |= 1 << i
        self.pools = {4: [net_range(self.net.ipv4_pool)], 6: [net_range(self.net.ipv6_pool)]}
        self.all_routes = {f: merge_ranges(r for rs in self.routes.values() for r in rs[f])
                           for f in FAMILIES}
        # autogroup:internet is what exit nodes carry: approved subnets go through routers.
        self.internet = {f: subtract(INTERNET[f], self.all_routes[f]) for f in FAMILIES}
        self.rules = [self._rule_data(r) for r in policy.rules]
        self.exit_blocked: set[int] = set()
        self._check_exit_use()
        self.warnings += self.ssh_warnings()
        self.warnings += self._unnamed_nodes() + self._shared_endpoints()
        for i in self.exit_blocked:
            self.exit_users[self.nodes[i].use_exit_node] &= ~(1 << i)

    # Validation across mesh and policy ------------------------------------------------
    def mesh_error(self, node: str, key: str | None, message: str, fix: str = "") -> None:
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
                self.mesh_error(name, "public_key" if not self.mesh.nodes[name].managed
                                 else None, f"has the same public key as node {seen[key]}",
                                 "every device needs its own key; if one was copied, make a "
                                 "new key on it and pin that")
            else:
                seen[key] = name

    def _unnamed_nodes(self) -> list[str]:
        """Nodes no rule names, by owner, group or tag (a misspelt owner, most often): they
        get no peers, unless they relay, route or tell NATed nodes their mappings."""
        named = 0
        for rd in self.rules:
            named |= self.all_mask if rd.self_dst else rd.any_src | rd.any_dst
        serving = sum(1 << i for i, n in enumerate(self.nodes)
                      if n.relay or n.lighthouse or n.advertise_routes or n.advertise_exit_node)
        unnamed = bits(self.all_mask & ~named & ~serving & ~self.ssh_named)
        if not unnamed:
            return []
        return [self._listed(unnamed, "no network rule of the policy names {} (by owner, group "
                             "or tag): no peers, nothing reaches them (a misspelt owner?)")]

    def _shared_endpoints(self) -> list[str]:
        """Two nodes cannot both be reached at one host:port: one of the endpoints is wrong."""
        seen: dict[str, str] = {}
        out = []
        for name in self.names:
            ep = self.mesh.nodes[name].endpoint
            if ep is None:
                continue
            key = ep.lower()
            if key in seen:
                out.append(f"{name} has the endpoint of {seen[key]} ({ep}): peers send both "
                           "nodes' packets to one place, so one of them is unreachable")
            else:
                seen[key] = name
        return out

    def _owner_may_assign(self, node: Node, tag: str) -> bool:
        """Whether the node's owner (or a tag it has) owns ``tag``. The node is tagged, so
        user owners are matched against its owner as if it were not."""
        return any(o.name in node.tags if o.kind is Kind.TAG
                   else o.matches_identity(node.owner, frozenset(), self.policy.groups)
                   for o in self.policy.tag_owners.get(tag, ()))

    def _check_tags(self) -> None:
        # A tag the policy does not declare stays on the node, as Tailscale keeps it on a
        # device whose tag left tagOwners: it has no owner to check, and no rule can name it
        # (a rule naming it is an error), so the node is matched as tagged and nothing else.
        undeclared: dict[str, list[str]] = defaultdict(list)
        for name in self.names:
            node = self.mesh.nodes[name]
            for tag in node.tags:
                if tag not in self.policy.tag_owners:
                    undeclared[tag].append(name)
                elif node.owner and not self._owner_may_assign(node, tag):
                    self.mesh_error(
                        name, "tags", f'{node.owner} may not assign "{tag}"',
                        f'add the owner (or a group of theirs) to tagOwners["{tag}"], or '
                        "remove owner: to declare an owner-less server")
        for tag, names in sorted(undeclared.items()):
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more"
                                             if len(names) > 10 else "")
            self.warnings.append(
                f'tag "{tag}" of {shown} is not declared in the policy\'s tagOwners: it has '
                'no owner, and only "*" and autogroup:tagged match it (declare it, or remove '
                "it from the node)")

    def _approvals(self) -> tuple[dict[int, set], set[int]]:
        """Router -> its approved prefixes, and the approved exit nodes."""
        approved_of: dict[int, set] = {}
        exits: set[int] = set()
        groups = self.policy.groups
        for i, node in enumerate(self.nodes):
            approved = set(node.approved_routes)
            for route in node.advertise_routes:
                for prefix, approvers in self.policy.auto_routes:
                    if (route.version == prefix.version and route.subnet_of(prefix)
                            and any(a.matches_identity(node.owner, node.tags, groups)
                                    for a in approvers)):
                        approved.add(route)
            for route in node.advertise_routes:
                if route not in approved:
                    self.warnings.append(f"{node.name}: advertised route {route} is not "
                                         "approved and is not used")
            if approved:
                approved_of[i] = approved
            if node.advertise_exit_node:
                if node.approved_exit_node or any(a.matches_identity(node.owner, node.tags,
                                                                     groups)
                                                  for a in self.policy.auto_exit):
                    exits.add(i)
                else:
                    self.warnings.append(f"{node.name}: exit node is not approved and is not "
                                         "used")
        for node in self.nodes:
            if node.failover_for and node.failover_for not in self.mesh.nodes:
                self.mesh_error(node.name, "failover_for", f'no node "{node.failover_for}"')
        return approved_of, exits

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

    @functools.cache  # noqa: B019 - one resolution per mesh; the cache dies with it
    def via_carriers(self, via: int) -> dict[int, dict[int, list]]:
        """Carriers among the routers of a via mask only (a grant's via tags)."""
        return self._carriers({i: nets for i, nets in self.approved.items() if via >> i & 1})

    def _user_masks(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.owner and not node.tagged:
                out[node.owner] = out.get(node.owner, 0) | (1 << i)
        return out

    # Selector resolution -------------------------------------------------------------
    def _identity_mask(self, sel: Selector) -> int:
        """Nodes an identity selector names, from indexes built once (a selector costs a few
        lookups, not a pass over every node)."""
        k = sel.kind
        if k in (Kind.ALL, Kind.DANGER_ALL):
            return self.all_mask
        if k is Kind.TAG:
            return self._tag_masks.get(sel.name, 0)
        if k is Kind.TAGGED:
            return self._tagged_mask
        if k is Kind.MEMBER:
            return self._member_mask
        if k is Kind.DOMAIN:
            return self._domain_masks.get(sel.name, 0)
        if k is Kind.GROUP:
            mask = 0
            for user in self.policy.groups.get(sel.name, ()):
                mask |= self.user_mask.get(user, 0)
            return mask
        return self.user_mask.get(sel.name, 0)

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

    @functools.cached_property
    def _domain_masks(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for user, m in self.user_mask.items():
            out[user.rpartition("@")[2]] |= m
        return dict(out)

    def addresses(self, sel: Selector) -> dict[int, list[tuple[int, int]]]:
        """Address ranges per family of an address selector (prefix, IP set, internet)."""
        if sel.kind is Kind.PREFIX:
            return {f: [net_range(sel.net)] if sel.net.version == f else [] for f in FAMILIES}
        if sel.kind is Kind.INTERNET:
            return self.internet
        return self._ipset(sel.name)

    @functools.cache  # noqa: B019 - one resolution per mesh; the cache dies with it
    def _ipset(self, name: str) -> dict[int, list[tuple[int, int]]]:
        """An IP set's ranges: its operations applied in order (references resolved)."""
        out: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for add, target in self.policy.ipsets.get(name, ()):
            ranges = self.addresses(target)
            for f in FAMILIES:
                out[f] = merge_ranges([*out[f], *ranges[f]]) if add else \
                    subtract(out[f], ranges[f])
        return out

    def masks(self, sel: Selector) -> dict[int, int]:
        """Nodes a selector names, per address family it names them in."""
        if sel not in self._mask_cache:
            if sel.kind in (Kind.INTERNET, Kind.SELF):
                m = {4: 0, 6: 0}
            elif sel.kind in (Kind.PREFIX, Kind.IPSET):
                m = {4: 0, 6: 0}
                for f, ranges in self.addresses(sel).items():
                    for lo, hi in ranges:
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

    def _rule_data(self, rule: Rule) -> RuleData:
        src_mask = {4: 0, 6: 0}
        dst_mask = {4: 0, 6: 0}
        src_ranges: dict[int, list] = {4: [], 6: []}
        dst_ranges: dict[int, list] = {4: [], 6: []}
        dst_cidr: dict[int, list] = {4: [], 6: []}
        for sel in rule.src:
            m = self.masks(sel)
            for f in FAMILIES:
                src_mask[f] |= m[f]
            if sel.kind is Kind.ALL:
                for f in FAMILIES:
                    src_ranges[f] += self.pools[f] + self.all_routes[f]
            elif sel.kind is Kind.DANGER_ALL:
                for f in FAMILIES:
                    src_ranges[f] += EVERYTHING[f]
            elif sel.kind in (Kind.PREFIX, Kind.IPSET):
                for f, ranges in self.addresses(sel).items():
                    src_ranges[f] += ranges
            else:
                v4, v6 = self.node_ranges(m[4])
                src_ranges[4] += v4
                src_ranges[6] += v6
        kinds = {d.kind for d in rule.dst}
        for sel in rule.dst:
            m = self.masks(sel)
            for f in FAMILIES:
                dst_mask[f] |= m[f]
            if sel.kind is Kind.ALL:
                for f in FAMILIES:
                    dst_ranges[f] += EVERYTHING[f]
                    dst_cidr[f] += EVERYTHING[f]
            elif sel.kind is Kind.INTERNET:
                for f in FAMILIES:
                    dst_ranges[f] += self.internet[f]
            elif sel.kind in (Kind.PREFIX, Kind.IPSET):
                for f, ranges in self.addresses(sel).items():
                    dst_ranges[f] += ranges
                    dst_cidr[f] += ranges
                    # An IP set holding internet addresses is carried by exit nodes too.
                    if sel.kind is Kind.IPSET and clip(ranges, self.internet[f]):
                        kinds.add(Kind.INTERNET)
            elif sel.kind is not Kind.SELF:
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
        return RuleData(rule, src_mask, dst_mask,
                        {f: merge_ranges(v) for f, v in src_ranges.items()},
                        {f: merge_ranges(v) for f, v in dst_ranges.items()},
                        {f: merge_ranges(v) for f, v in dst_cidr.items()},
                        Kind.SELF in kinds, port_boxes, sorted(set(other)), via,
                        to_internet=bool(kinds & {Kind.ALL, Kind.INTERNET}))

    def _internet_allowed(self, i: int, exit_node: int) -> bool:
        """A rule lets node i reach the internet, through this exit node (via allowing)."""
        bit = 1 << i
        return any(rd.any_src & bit and rd.to_internet
                   and (rd.via is None or rd.via >> exit_node & 1) for rd in self.rules)

    def _check_exit_use(self) -> None:
        for i, node in enumerate(self.nodes):
            target = node.use_exit_node
            if target is None:
                continue
            if target not in self.mesh.nodes:
                self.mesh_error(node.name, "use_exit_node", f'no node "{target}"')
            elif target not in self.index:
                self.mesh_error(node.name, "use_exit_node", f'exit node "{target}" has expired')
            elif not self.mesh.nodes[target].advertise_exit_node:
                self.mesh_error(node.name, "use_exit_node",
                                 f'"{target}" does not offer itself as exit node',
                                 f"set advertise_exit_node: true on {target}")
            # Approval and the internet grant come from the policy, which must always be
            # able to take access away (a deny-all policy in an incident must apply): losing
            # either stops the node using the exit node, with a warning, not a failed run.
            elif self.index[target] not in self.exits:
                self.exit_blocked.add(i)
                self.warnings.append(f'{node.name}: exit node "{target}" is not approved; '
                                     "its internet traffic stays local")
            elif not self._internet_allowed(i, self.index[target]):
                self.exit_blocked.add(i)
                self.warnings.append(f"{node.name}: policy does not grant it "
                                     f'autogroup:internet, so it does not use exit node "{target}"')

    # SSH -----------------------------------------------------------------------------
    # A managed node that opts in (ssh_policy, as `tailscale set --ssh`) is SSH-managed: over
    # the mesh, TCP port 22 reaches it only from sources an ssh rule lets in (and a network
    # rule allows), and its sshd lets each source log in only as the users the rules name.
    # Elsewhere port 22 follows the network rules alone, whatever the ssh rules say.
    SSH_PORT = 22

    @functools.cached_property
    def _ssh(self) -> list[tuple[int, int, bool]]:
        """Each ssh rule as (source mask, destination mask, autogroup:self among dst)."""
        out = []
        for r in self.policy.ssh:
            src = 0
            for sel in r.src:
                m = self.masks(sel)
                src |= m[4] | m[6]
            dst, self_dst = 0, False
            for sel in r.dst:
                if sel.kind is Kind.SELF:
                    self_dst = True
                elif sel.kind is Kind.USER:
                    dst |= self.user_mask.get(sel.name, 0)
                else:
                    dst |= self._identity_mask(sel)
            out.append((src, dst, self_dst))
        return out

    def _self_targets(self, src: int) -> int:
        """autogroup:self for these sources: the untagged nodes of the users among them."""
        return sum(m for m in self.user_mask.values() if m & src)  # disjoint per user

    @functools.cached_property
    def ssh_named(self) -> int:
        """The nodes some ssh rule names as destination."""
        mask = 0
        for src, dst, self_dst in self._ssh:
            mask |= dst | (self._self_targets(src) if self_dst else 0)
        return mask

    @functools.cached_property
    def ssh_hosts(self) -> int:
        """The SSH-managed nodes: those that opted in (only managed nodes can)."""
        return sum(1 << i for i, n in enumerate(self.nodes) if n.ssh_policy)

    def ssh_warnings(self) -> list[str]:
        """Opt-in and ssh rules that disagree: both are allowed, and both surprise someone."""
        out = []
        managed = sum(1 << i for i, n in enumerate(self.nodes) if n.managed)
        ignored = bits(self.ssh_named & managed & ~self.ssh_hosts)
        if ignored:
            out.append(self._listed(ignored, "ssh rules name {} as destination, but "
                                    "ssh_policy is off there: port 22 over the mesh follows "
                                    "the network rules alone (set ssh_policy: true on the "
                                    "node, or network.ssh_policy)"))
        closed = bits(self.ssh_hosts & ~self.ssh_named)
        if closed:
            out.append(self._listed(closed, "ssh_policy is on for {}, but no ssh rule names "
                                    "it as destination: nobody may use SSH to it over the "
                                    "mesh"))
        return out

    def _listed(self, nodes: list[int], text: str, shown: int = 10) -> str:
        names = [self.names[i] for i in nodes]
        return text.format(", ".join(names[:shown])
                           + (f" and {len(names) - shown} more" if len(names) > shown else ""))

    def own_devices(self, i: int) -> int:
        """The untagged nodes of node i's owner (what autogroup:self means for it)."""
        node = self.nodes[i]
        return self.user_mask.get(node.owner, 0) if node.owner and not node.tagged else 0

    def ssh_sources(self, h: int) -> int:
        """Nodes an ssh rule lets log in to node h."""
        bit, out = 1 << h, 0
        mine = self.own_devices(h)
        for src, dst, self_dst in self._ssh:
            if dst & bit:
                out |= src
            if self_dst and mine & bit:
                out |= src & mine
        return out & ~bit

    def ssh_targets(self, s: int) -> int:
        """SSH-managed nodes that let node s log in."""
        bit, out = 1 << s, 0
        mine = self.own_devices(s)
        for src, dst, self_dst in self._ssh:
            if src & bit:
                out |= dst | (mine if self_dst else 0)
        return out & self.ssh_hosts & ~bit

    def ssh_logins(self, h: int, s: int) -> tuple[tuple[str, ...], bool]:
        """The logins node s may use on node h, and whether any non-root login is allowed
        (autogroup:nonroot): the union over the rules that let s in."""
        hb, sb = 1 << h, 1 << s
        src_node = self.nodes[s]
        mine = self.own_devices(h)
        logins: set[str] = set()
        nonroot = False
        for rule, (src, dst, self_dst) in zip(self.policy.ssh, self._ssh, strict=True):
            if src & sb and (dst & hb or (self_dst and mine & hb and mine & sb)):
                named, any_but_root = rule.logins(src_node.owner, src_node.tagged)
                logins |= named
                nonroot |= any_but_root
        return tuple(sorted(logins)), nonroot

    @functools.cached_property
    def rules_naming(self) -> dict[int, list[int]]:
        """Node -> the rules that name it as source or destination (autogroup:self names
        everyone), in policy order."""
        out: dict[int, list[int]] = defaultdict(list)
        everyone = range(len(self.nodes))
        for k, rd in enumerate(self.rules):
            for i in everyone if rd.self_dst else bits(rd.any_src | rd.any_dst):
                out[i].append(k)
        return out


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
