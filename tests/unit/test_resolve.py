"""The resolve stage in process (wgmesh.compile.resolve.Resolution): which nodes each selector names
(bit masks per family), approvals and which router carries a prefix, exit nodes a node may
use, expired nodes, and what a name or address is as an endpoint."""

import datetime as dt
import ipaddress

from meshkit import make

from wgmesh.selectors import Kind, Selector

NODES = {
    "alice-laptop": {"owner": "alice@example.com"},
    "bob-laptop": {"owner": "bob@example.com", "use_exit_node": "exit1"},
    "web1": {"tags": ["tag:web"]},
    "gw-a": {"tags": ["tag:router"], "endpoint": "192.0.2.20:51820",
             "advertise_routes": ["10.1.0.0/16"]},
    "gw-b": {"tags": ["tag:router"], "endpoint": "192.0.2.21:51820",
             "advertise_routes": ["10.1.2.0/24", "10.9.0.0/16"]},
    "exit1": {"tags": ["tag:exit"], "endpoint": "192.0.2.30:51820",
              "advertise_exit_node": True},
    "old": {"owner": "alice@example.com", "expires": "2025-12-01"},
}
POLICY = {
    "groups": {"group:eng": ["alice@example.com"]},
    "tagOwners": {"tag:web": [], "tag:router": [], "tag:exit": []},
    "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:exit"]},
    "acls": [
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443", "10.1.2.0/24:*"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["autogroup:internet:*"]},
    ],
}


def resolution(tmp_path):
    return make(tmp_path, NODES, POLICY).resolution


def named(res, mask: int) -> list[str]:
    return [n for i, n in enumerate(res.names) if mask >> i & 1]


def test_selectors_name_nodes_by_identity_and_expired_nodes_are_gone(tmp_path):
    res = resolution(tmp_path)
    assert res.expired == ["old"] and "old" not in res.names
    group = res.masks(Selector(Kind.GROUP, "group:eng", "group:eng"))
    assert named(res, group[4]) == named(res, group[6]) == ["alice-laptop"]
    assert named(res, res.masks(Selector(Kind.TAG, "tag:router", "tag:router"))[4]) == [
        "gw-a", "gw-b"]
    assert named(res, res.masks(Selector(Kind.TAGGED, "autogroup:tagged"))[4]) == [
        "exit1", "gw-a", "gw-b", "web1"]
    assert named(res, res.masks(Selector(Kind.MEMBER, "autogroup:member"))[4]) == [
        "alice-laptop", "bob-laptop"]


def test_routes_are_approved_and_the_longest_prefix_has_one_carrier(tmp_path):
    res = resolution(tmp_path)
    gw_a, gw_b = res.index["gw-a"], res.index["gw-b"]
    assert {res.names[i]: sorted(map(str, nets)) for i, nets in res.approved.items()} == {
        "gw-a": ["10.1.0.0/16"], "gw-b": ["10.1.2.0/24", "10.9.0.0/16"]}
    # 10.1.2.0/24 inside gw-a's /16 goes to gw-b, the longer prefix: gw-a carries the rest.
    lo, hi = (int(ipaddress.ip_address(a)) for a in ("10.1.2.0", "10.1.2.255"))
    assert (lo, hi) in res.carried[gw_b][4]
    assert not any(a <= lo and hi <= b for a, b in res.carried[gw_a][4])
    assert [res.names[i] for i in res.exits] == ["exit1"]


def test_a_rule_resolved_once_into_masks_ranges_and_ports(tmp_path):
    res = resolution(tmp_path)
    web, subnet, internet = res.rules
    assert named(res, web.any_src) == ["alice-laptop"] and named(res, web.any_dst) == ["web1"]
    # No proto: TCP and UDP to the port (ICMP follows any relation, apart).
    assert web.port_boxes == [((6, 6), (443, 443)), ((17, 17), (443, 443))]
    assert subnet.dst_cidr[4] == [(int(ipaddress.ip_address("10.1.2.0")),
                                   int(ipaddress.ip_address("10.1.2.255")))]
    assert internet.to_internet and named(res, internet.any_src) == ["bob-laptop"]
    assert dict(res.exit_users) == {"exit1": 1 << res.index["bob-laptop"]}


def test_endpoints_are_nodes_by_name_or_address_and_strangers_have_no_identity(tmp_path):
    res = resolution(tmp_path)
    web = res.endpoint_of("web1", 6)
    assert (web.node, web.tags, web.addr.version) == ("web1", frozenset({"tag:web"}), 6)
    assert res.endpoint_of(str(res.alloc["alice-laptop"].ipv4)).user == "alice@example.com"
    stranger = res.endpoint_of("198.51.100.7")
    assert (stranger.node, stranger.user, stranger.tags) == (None, None, frozenset())


def test_a_node_that_expires_later_is_resolved(tmp_path):
    nodes = dict(NODES, old={"owner": "alice@example.com", "expires": "2026-06-01"})
    res = make(tmp_path, nodes, POLICY).resolution
    assert res.expired == [] and "old" in res.names
    assert res.nodes[res.index["old"]].expires == dt.date(2026, 6, 1)
