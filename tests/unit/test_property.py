"""Property: for random meshes and policies, what each host's rendered nftables sets let
through equals what the evaluator decides, at the destination and at the source.

The sets are read back from the rendered ruleset text and looked up the way nftables does
(any element whose ranges contain the packet), so neither the compiler's internal data nor
the renderer is trusted to agree with the evaluator by construction."""

import ipaddress
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshkit import lookup, make, parse_sets

from wgmesh import render
from wgmesh.intervals import contains, disjoint, disjoint_grouped

USERS = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.org"]
TAGS = ["tag:a", "tag:b"]
SUBNETS = ["10.0.0.0/8", "10.33.0.0/16", "10.33.5.0/24", "192.168.1.0/24"]
SRC = ["*", "alice@example.com", "bob@example.com", "group:g", "tag:a", "tag:b",
       "autogroup:member", "autogroup:tagged", "100.64.0.0/30", "fd7a:115c:a1e0::/126",
       "user:*@example.com", "autogroup:danger-all", "office", "ipset:s", *SUBNETS]
DST = ["*", "alice@example.com", "group:g", "tag:a", "tag:b", "autogroup:member",
       "autogroup:tagged", "100.64.0.2", "100.64.0.4/31", "user:*@example.org", "one",
       "office", "autogroup:internet", "ipset:s", *SUBNETS]
# Routes overlap on purpose: nested (10/8 and 10.33/16) and the same prefix twice.
ROUTES = ["10.0.0.0/8", "10.33.0.0/16", "10.33.0.0/16", "192.168.1.0/24"]
PROBES = ["10.1.2.3", "10.33.5.5", "10.33.200.1", "192.168.1.7"]
PORTS = ["*", "22", "80-90", "22,443", "1000-2000"]


@st.composite
def node_specs(draw):
    count = draw(st.integers(2, 5))
    nodes = {}
    for i in range(count):
        tags = draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2))
        owner = draw(st.sampled_from(USERS)) if not tags or draw(st.booleans()) else None
        spec = {"tags": tags} if tags else {}
        if owner:
            spec["owner"] = owner
        if draw(st.integers(0, 3)):  # most nodes are public; a pair behind NAT never peers
            spec["endpoint"] = f"192.0.2.{i + 1}:51820"
        if draw(st.booleans()):  # a subnet router
            routes = draw(st.lists(st.sampled_from(ROUTES), min_size=1, max_size=2, unique=True))
            spec["advertise_routes"] = spec["approved_routes"] = routes
        nodes[f"n{i}"] = spec
    return nodes


@st.composite
def policies(draw):
    policy = {"groups": {"group:g": draw(st.lists(st.sampled_from(USERS), unique=True))},
              "hosts": {"one": "100.64.0.3", "office": "10.33.0.0/16"},
              # An IP set: a route less a part of it, one mesh address, a nested set.
              "ipsets": {"ipset:s": ["add 10.0.0.0/8", "remove 10.33.5.0/24", "add ipset:t"],
                         "ipset:t": ["100.64.0.2", "192.168.1.0/25"]},
              "tagOwners": {t: ["autogroup:member"] for t in TAGS}}
    if draw(st.integers(0, 9)) == 0:
        return policy  # no acls at all: allow everything
    acls = []
    for _ in range(draw(st.integers(0, 4))):
        rule = {"action": "accept",
                "src": draw(st.lists(st.sampled_from(SRC), min_size=1, max_size=2))}
        if draw(st.integers(0, 4)) == 0:
            rule["src"] = draw(st.lists(st.sampled_from(
                ["alice@example.com", "group:g", "autogroup:member", "user:*@example.com"]),
                min_size=1, max_size=2))
            rule["dst"] = ["autogroup:self:" + draw(st.sampled_from(PORTS))]
            # autogroup:self beside other destinations, at the same or other ports.
            rule["dst"] += [f"{d}:{draw(st.sampled_from(PORTS))}" for d in
                            draw(st.lists(st.sampled_from(DST), max_size=2))]
        else:
            rule["dst"] = [f"{d}:{draw(st.sampled_from(PORTS))}" for d in
                           draw(st.lists(st.sampled_from(DST), min_size=1, max_size=2))]
        proto = draw(st.sampled_from([None, None, "tcp", "udp"]))
        if proto:
            rule["proto"] = proto
        acls.append(rule)
    policy["acls"] = acls
    return policy


def nft_allows(sets, direction, family, peer_addr, proto, port):
    if proto in (1, 58):
        return lookup(sets[f"ping_{direction}{family}"], (peer_addr,))
    return lookup(sets[f"{direction}{family}"], (peer_addr, proto, port))


def nft_forwards(sets, src, dst, proto, port):
    if proto == 1:
        return lookup(sets["ping_fwd4"], (src, dst))
    return lookup(sets["fwd4"], (src, dst, proto, port))


def carrier(nodes, addr):
    """The router that carries an address, decided here from the specs: the longest approved
    prefix, then the first router by name."""
    best = None
    for name in sorted(nodes):
        for route in nodes[name].get("approved_routes", ()):
            net = ipaddress.ip_network(route)
            if addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, name)
    return best and best[1]


def next_hop(peers, addr):
    """The peer WireGuard sends a packet for ``addr`` to (longest AllowedIPs prefix)."""
    best = None
    for p in peers:
        for text in p.allowed_ips:
            net = ipaddress.ip_network(text)
            if addr.version == net.version and addr in net and (
                    best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, p.name)
    return best and best[1]


def owns(nodes, name, addr):
    return any(addr in ipaddress.ip_network(r) for r in nodes[name].get("approved_routes", ()))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nodes=node_specs(), policy=policies())
def test_rendered_sets_agree_with_the_evaluator(nodes, policy):
    with tempfile.TemporaryDirectory() as tmp:
        b = make(Path(tmp), nodes, policy)
    comp, res, ev = b.compiler, b.resolution, b.evaluator
    hosts = comp.compile_all()
    sets = {n: parse_sets(render.nftables(h, b.mesh.network)) for n, h in hosts.items()}
    peer_names = {n: {p.name for p in h.peers} for n, h in hosts.items()}
    for s in hosts:
        for d in hosts:
            if s == d:
                continue
            for family in (4, 6):
                src, dst = res.endpoint_of(s, family), res.endpoint_of(d, family)
                for proto, port in ((6, 22), (6, 85), (17, 443), (6, 1500), (17, 9),
                                    (1 if family == 4 else 58, None)):
                    verdict = ev.check(src, dst, proto, port).allow
                    at_dst = nft_allows(sets[d], "in", family, int(src.addr), proto, port)
                    at_src = nft_allows(sets[s], "out", family, int(dst.addr), proto, port)
                    assert verdict == at_dst == at_src, (s, d, family, proto, port, policy)
                    reachable = "endpoint" in nodes[s] or "endpoint" in nodes[d]
                    if verdict:
                        assert (d in peer_names[s]) == (s in peer_names[d]) == reachable
    # Routed traffic, node to subnet, subnet to node and subnet to subnet: the sending side's
    # sets, the forwarding sets of every router on the path and WireGuard's next hops
    # (longest AllowedIPs prefix) agree with the evaluator.
    ends = [*(n for n in hosts), *(ipaddress.ip_address(a) for a in PROBES)]
    for s in ends:
        for d in ends:
            if s == d or (isinstance(s, str) and isinstance(d, str)):
                continue
            s_addr = res.endpoint_of(s, 4).addr if isinstance(s, str) else s
            d_addr = res.endpoint_of(d, 4).addr if isinstance(d, str) else d
            # The routers on the path: the one carrying each subnet end. A router sending
            # into a subnet it approves itself reaches it on its own LAN, off the mesh.
            s_via = None if isinstance(s, str) else carrier(nodes, s)
            d_via = None if isinstance(d, str) else carrier(nodes, d)
            first = s if isinstance(s, str) else s_via
            last = d if isinstance(d, str) else d_via
            if first is None or last is None or first == last:
                continue  # no router carries it: not on the mesh at all
            if (isinstance(s, str) and owns(nodes, s, d_addr)) or (
                    isinstance(d, str) and owns(nodes, d, s_addr)):
                continue
            for proto, port in ((6, 22), (6, 443), (17, 9), (1, None)):
                verdict = ev.check(res.endpoint_of(str(s_addr)),
                                   res.endpoint_of(str(d_addr)), proto, port).allow
                seen = []
                if isinstance(s, str):
                    seen.append(nft_allows(sets[s], "out", 4, int(d_addr), proto, port))
                else:
                    seen.append(nft_forwards(sets[s_via], int(s_addr), int(d_addr), proto, port))
                if isinstance(d, str):
                    seen.append(nft_allows(sets[d], "in", 4, int(s_addr), proto, port))
                else:
                    seen.append(nft_forwards(sets[d_via], int(s_addr), int(d_addr), proto, port))
                assert all(x == verdict for x in seen), (s, d, proto, port, seen, policy)
                reachable = "endpoint" in nodes[first] or "endpoint" in nodes[last]
                if verdict and reachable:
                    out_first = hosts[first].peers
                    out_last = hosts[last].peers
                    assert next_hop(out_first, d_addr) == last, (s, d, policy)
                    assert next_hop(out_last, s_addr) == first, (s, d, policy)


_range = st.tuples(st.integers(0, 8), st.integers(0, 3)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=100, deadline=None)
@given(boxes=st.lists(st.tuples(_range, _range, _range), max_size=12),
       shared=st.lists(st.lists(_range, max_size=4), min_size=1, max_size=3),
       rests=st.lists(st.tuples(_range, _range), min_size=1, max_size=4))
def test_disjoint_boxes_cover_exactly_the_input_without_overlap(boxes, shared, rests):
    grid = [(a, b, c) for a in range(13) for b in range(13) for c in range(13)]
    out = disjoint(boxes)
    assert out == sorted(out)
    for p in grid:
        hits = sum(all(lo <= v <= hi for (lo, hi), v in zip(b, p, strict=True)) for b in out)
        assert hits == contains(boxes, p), p  # at most one box, and only where the input is
    # Grouped input where several rests share the very same address lists (one rule's
    # addresses for each of its ports) gives what the same boxes one by one give.
    grouped = {rest: [shared[i % len(shared)]] for i, rest in enumerate(rests)}
    flat = [(r, *rest) for rest, lists in grouped.items() for ranges in lists for r in ranges]
    assert disjoint_grouped(grouped) == disjoint(flat)
