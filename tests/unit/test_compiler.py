"""Compiler semantics: identities, defaults, routes, exit nodes, connection types, output."""

import ipaddress
import json
from pathlib import Path

import pytest
from meshkit import allowed, fake_key, lookup, make, parse_sets, peers, wgmesh

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_bundle import (
    BundleError,
    check_resolver_conf,
)
from wgmesh import render
from wgmesh.device import client_config
from wgmesh.errors import InputError

TAGS = {"tag:web": ["group:eng"], "tag:db": [], "tag:router": [], "tag:exit": []}
BASE = {"groups": {"group:eng": ["alice@example.com"]}, "tagOwners": TAGS}




def pol(**kw):
    return {**BASE, **kw}


def test_no_rules_key_allows_everything_and_an_empty_list_denies_everything(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"},
             "b": {"owner": "bob@example.com", "endpoint": "192.0.2.2:51820"}}
    (tmp_path / "x").mkdir()
    b = make(tmp_path / "x", nodes, pol())
    assert allowed(b, "a", "b", port=1234) and allowed(b, "b", "a", "udp", 53)
    assert allowed(b, "a", "b", "icmp", None)
    assert peers(b, "a") == ["b"]
    (tmp_path / "y").mkdir()
    b = make(tmp_path / "y", nodes, pol(acls=[]))
    assert not allowed(b, "a", "b", port=22) and not allowed(b, "a", "b", "icmp", None)
    assert peers(b, "a") == [] and peers(b, "b") == []


def test_tags_replace_the_owner_identity(tmp_path):
    nodes = {"laptop": {"owner": "alice@example.com"},
             "server": {"owner": "alice@example.com", "tags": ["tag:web"]},
             "db": {"tags": ["tag:db"], "endpoint": "192.0.2.3:51820"}}
    b = make(tmp_path, nodes, pol(acls=[
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]}]))
    assert allowed(b, "laptop", "db", port=5432)
    assert not allowed(b, "server", "db", port=5432)  # tagged: no longer alice's
    assert peers(b, "db") == ["laptop"]


def test_owner_must_be_a_tag_owner(tmp_path):
    with pytest.raises(InputError, match=r'bob@example\.com may not assign "tag:web"'):
        make(tmp_path, {"s": {"owner": "bob@example.com", "tags": ["tag:web"]}}, pol())


def test_a_tag_the_policy_does_not_declare_stays_on_its_node_with_a_warning(tmp_path):
    """As Tailscale keeps a tag on a device after it left tagOwners: the node is tagged (no
    longer its owner's), has no owner check, and only autogroup:tagged and "*" match it."""
    nodes = {"laptop": {"owner": "alice@example.com"},
             "old": {"owner": "bob@example.com", "tags": ["tag:retired"],
                     "endpoint": "192.0.2.3:51820"},
             "db": {"tags": ["tag:db", "tag:retired"], "endpoint": "192.0.2.4:51820"}}
    b = make(tmp_path, nodes, pol(acls=[
        {"action": "accept", "src": ["autogroup:tagged"], "dst": ["alice@example.com:80"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"]},
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]}]))
    assert allowed(b, "old", "laptop", port=80) and allowed(b, "db", "laptop", port=80)
    assert not allowed(b, "old", "db", port=5432)  # tagged: no longer bob's
    assert allowed(b, "laptop", "db", port=5432)  # its declared tag still matches
    assert b.compiler.warnings == [
        'tag "tag:retired" of db, old is not declared in the policy\'s tagOwners: it has no '
        'owner, and only "*" and autogroup:tagged match it (declare it, or remove it from '
        "the node)"]
    answers = wgmesh(["eval", "-i", str(tmp_path)], check=True, input=json.dumps(
        {"src": "tag:retired", "dst": "laptop", "proto": "tcp", "port": 80}) + "\n").stdout
    assert json.loads(answers)["allow"] is True  # eval takes the tag the nodes carry
    # A rule may not name it: Tailscale refuses that policy too.
    (tmp_path / "r").mkdir()
    with pytest.raises(InputError, match=r'tag not found: "tag:retired"'):
        make(tmp_path / "r", nodes, pol(acls=[
            {"action": "accept", "src": ["tag:retired"], "dst": ["*:*"]}]))


def test_silent_mistakes_are_warned_about(tmp_path):
    """A misspelt owner leaves a node that no rule names (no peers, no error otherwise), and
    two nodes on one endpoint cannot both be reached: both pass the checks, with a warning.
    eval names the closest user for one no input names."""
    nodes = {"a": {"owner": "alice@example.com"},
             "b": {"owner": "alice@exmaple.com"},  # the typo
             "s1": {"tags": ["tag:db"], "endpoint": "192.0.2.7:51820"},
             "s2": {"tags": ["tag:db"], "endpoint": "192.0.2.7:51820"},
             "r": {"tags": ["tag:router"], "endpoint": "192.0.2.8:51820", "relay": True}}
    b = make(tmp_path, nodes, pol(acls=[
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}]))
    assert b.compiler.warnings == [  # the relay r is named by no rule, and is no mistake
        "no network rule of the policy names b (by owner, group or tag): no peers, nothing "
        "reaches them (a misspelt owner?)",
        "s2 has the endpoint of s1 (192.0.2.7:51820): peers send both nodes' packets to one "
        "place, so one of them is unreachable"]
    answers = wgmesh(["eval", "-i", str(tmp_path)], check=True, input="".join(
        json.dumps({"src": src, "dst": "s1", "proto": "tcp", "port": 5432}) + "\n"
        for src in ("alice@exampel.com", "alice@example.com"))).stdout.splitlines()
    typo, right = map(json.loads, answers)
    assert typo["allow"] is False and typo["hint"] == (
        'no node, group or rule names the user "alice@exampel.com" (it stands for a user with '
        'no device); did you mean "alice@example.com"?')
    assert right["allow"] is True and "hint" not in right


def test_headscale_users_with_no_domain_are_users(tmp_path):
    """Headscale writes a user with no domain as alice@ in policies (and mesh.yml owners are
    spelt the same): groups, rules, tagOwners, tests and eval take it."""
    nodes = {"a1": {"owner": "alice@"}, "b1": {"owner": "bob@"},
             "srv": {"owner": "alice@", "tags": ["tag:web"], "endpoint": "192.0.2.9:51820"}}
    policy = """{"groups": {"group:eng": ["alice@"]}, "tagOwners": {"tag:web": ["group:eng"]},
      "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:22"]},
               {"action": "accept", "src": ["tag:web"], "dst": ["bob@:80"]}],
      "tests": [{"src": "alice@", "accept": ["srv:22"]}, {"src": "bob@", "deny": ["srv:22"]}]}"""
    b = make(tmp_path, nodes, policy)
    assert allowed(b, "a1", "srv") and not allowed(b, "b1", "srv")
    assert allowed(b, "srv", "b1", port=80) and not allowed(b, "srv", "a1", port=80)
    eval_out = wgmesh(["eval", "-i", str(tmp_path)], check=True, input=json.dumps(
        {"src": "bob@", "dst": "srv", "proto": "tcp", "port": 22}) + "\n").stdout
    assert json.loads(eval_out)["allow"] is False


def test_autogroup_self_reaches_only_the_users_own_untagged_devices(tmp_path):
    nodes = {"a1": {"owner": "alice@example.com"},
             "a2": {"owner": "alice@example.com", "endpoint": "192.0.2.2:51820"},
             "a3": {"owner": "alice@example.com", "tags": ["tag:web"]},
             "b1": {"owner": "bob@example.com"}, "b2": {"owner": "bob@example.com"}}
    b = make(tmp_path, nodes, pol(acls=[
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]))
    assert allowed(b, "a1", "a2") and allowed(b, "b2", "b1")
    assert not allowed(b, "a1", "b1") and not allowed(b, "a1", "a3")
    assert not allowed(b, "a3", "a1")
    assert peers(b, "a1") == ["a2"] and peers(b, "a3") == []


def test_autogroup_self_beside_other_destinations(tmp_path):
    """One rule naming autogroup:self and a tag: both halves reach the rendered filters, as
    eval decides (the tag half used to be dropped)."""
    nodes = {"laptop": {"owner": "alice@example.com"},
             "phone": {"owner": "alice@example.com", "endpoint": "192.0.2.8:51820"},
             "web": {"tags": ["tag:web"], "endpoint": "192.0.2.9:51820"}}
    b = make(tmp_path, nodes, pol(acls=[{"action": "accept", "src": ["alice@example.com"],
                                         "dst": ["tag:web:443", "autogroup:self:*"]}]))
    assert allowed(b, "laptop", "web", port=443) and allowed(b, "laptop", "phone", port=22)
    assert not allowed(b, "laptop", "web", port=22)
    assert peers(b, "web") == ["laptop", "phone"]
    assert peers(b, "laptop") == ["phone", "web"]
    web_rules = render.nftables(b.compiler.host("web"), b.mesh.network)
    assert "100.64.0.1-100.64.0.2 . tcp . 443," in web_rules  # laptop and phone, merged


def test_ports_protocols_and_ping_follow_any_relation(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"}, "w": {"tags": ["tag:web"]}}
    b = make(tmp_path, nodes, pol(acls=[
        {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["tag:web:80-90"]}]))
    assert allowed(b, "a", "w", "tcp", 85) and not allowed(b, "a", "w", "tcp", 91)
    assert not allowed(b, "a", "w", "udp", 85)
    assert allowed(b, "a", "w", "icmp", None)  # like Tailscale: ping follows any relation
    assert not allowed(b, "w", "a", "icmp", None)
    assert allowed(b, "a", "w", "tcp", 85, family=6)


def test_host_alias_for_ipv4_gives_no_ipv6_access(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"},
             "w": {"tags": ["tag:web"], "address": "100.64.0.50"}}
    b = make(tmp_path, nodes, pol(hosts={"websrv": "100.64.0.50"}, acls=[
        {"action": "accept", "src": ["group:eng"], "dst": ["websrv:443"]}]))
    assert allowed(b, "a", "w", port=443)
    assert not allowed(b, "a", "w", port=443, family=6)
    sets = b.compiler.host("w").sets
    assert sets.get("in4") and not sets.get("in6")


def test_grants_ip_forms(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"}, "d": {"tags": ["tag:db"]}}
    b = make(tmp_path, nodes, pol(grants=[
        {"src": ["group:eng"], "dst": ["tag:db"], "ip": ["tcp:5432", "udp:53", "8000-8001"]}]))
    assert allowed(b, "a", "d", "tcp", 5432) and allowed(b, "a", "d", "udp", 53)
    assert allowed(b, "a", "d", "udp", 8001) and not allowed(b, "a", "d", "tcp", 53)


def test_an_app_grant_gives_no_network_access(tmp_path):
    """As in Tailscale: an application capability alone opens nothing; beside ip, the ip
    part works as usual."""
    nodes = {"a": {"owner": "alice@example.com"}, "d": {"tags": ["tag:db"]}}
    cap = {"example.com/cap/dashboard": [{"role": "viewer"}]}
    b = make(tmp_path, nodes, pol(grants=[{"src": ["group:eng"], "dst": ["tag:db"], "app": cap}]))
    assert not allowed(b, "a", "d", "tcp", 443) and peers(b, "a") == []
    assert b.compiler.warnings == ["policy.hujson:1: grants[0]: app capabilities are not "
                                   "enforced by wgmesh (they give no network access)",
                                   "no network rule of the policy names a, d (by owner, group "
                                   "or tag): no peers, nothing reaches them (a misspelt owner?)"]
    b = make(tmp_path, nodes, pol(grants=[
        {"src": ["group:eng"], "dst": ["tag:db"], "ip": ["tcp:443"], "app": cap}]))
    assert allowed(b, "a", "d", "tcp", 443) and not allowed(b, "a", "d", "tcp", 22)


def test_connection_types_endpoints_and_keepalive(tmp_path):
    nodes = {
        "pub": {"tags": ["tag:db"], "endpoint": "192.0.2.11:51820", "relay": True},
        "lan1": {"tags": ["tag:db"], "site": "home", "lan_address": "198.51.100.10"},
        "lan2": {"tags": ["tag:db"], "site": "home", "lan_address": "198.51.100.11"},
        "cafe": {"tags": ["tag:db"]},
    }
    b = make(tmp_path, nodes, pol())
    by = {p.name: p for p in b.compiler.host("lan1").peers}
    assert by["lan2"].connection == "lan" and by["lan2"].endpoint == "198.51.100.11:51820"
    assert by["lan2"].keepalive is None
    assert by["pub"].connection == "direct" and by["pub"].endpoint == "192.0.2.11:51820"
    assert by["pub"].keepalive == 25  # behind NAT: keep the mapping open
    assert by["cafe"].connection == "relay" and by["cafe"].relay == "pub"
    pub = {p.name: p for p in b.compiler.host("pub").peers}
    assert pub["cafe"].connection == "direct" and pub["cafe"].endpoint is None
    assert pub["cafe"].keepalive is None


def test_no_relay_means_no_connection_and_no_peer_entry(tmp_path):
    """Two nodes behind NAT with no relay can never connect: no dead [Peer] entry on either
    side, and one warning that names the pair and the fixes."""
    b = make(tmp_path, {"x": {"tags": ["tag:db"]}, "y": {"tags": ["tag:db"]},
                        "z": {"tags": ["tag:db"], "endpoint": "192.0.2.3:51820"}}, pol())
    assert [p.name for p in b.compiler.host("z").peers] == ["x", "y"]
    assert [p.name for p in b.compiler.host("x").peers] == ["z"]
    assert "y" not in [p.name for p in b.compiler.host("x").peers]
    warnings = [w for w in b.compiler.warnings if "can never connect" in w]
    assert len(warnings) == 1 and warnings[0].startswith("1 pair(s) may talk by policy")
    assert "no peer entry: x and y (add a node with relay: true" in warnings[0]
    out = wgmesh(["check", "-i", str(tmp_path), "--today", "2026-01-01"])
    assert out.returncode == 0
    assert "warning: 1 pair(s) may talk by policy but can never connect" in out.stderr


ROUTER = {"tags": ["tag:router"], "endpoint": "192.0.2.13:51820",
          "advertise_routes": ["198.51.100.128/26", "203.0.113.0/24"]}


def test_subnet_routes_are_used_only_once_approved_and_filtered_by_policy(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"}, "b": {"owner": "bob@example.com"},
             "r": ROUTER}
    b = make(tmp_path, nodes, pol(
        autoApprovers={"routes": {"198.51.100.0/24": ["tag:router"]}},
        acls=[{"action": "accept", "src": ["group:eng"], "dst": ["198.51.100.130:22"]}]))
    assert b.compiler.warnings == ["r: advertised route 203.0.113.0/24 is not approved and "
                                   "is not used",
                                   "no network rule of the policy names b (by owner, group "
                                   "or tag): no peers, nothing reaches them (a misspelt owner?)"]
    a_peers = {p.name: p for p in b.compiler.host("a").peers}
    assert "198.51.100.128/26" in a_peers["r"].allowed_ips
    assert "203.0.113.0/24" not in a_peers["r"].allowed_ips
    assert allowed(b, "a", "198.51.100.130", port=22)
    assert not allowed(b, "a", "198.51.100.130", port=80)
    assert not allowed(b, "a", "198.51.100.131", port=22)
    assert peers(b, "b") == []  # bob may reach nothing there, so learns no router
    r = b.compiler.host("r")
    assert r.forwarding and r.routes == ["198.51.100.128/26"]
    text = render.nftables(r, b.mesh.network)
    assert "100.64.0.1 . 198.51.100.130 . tcp . 22" in text
    assert "masquerade" in text


def test_exit_node_needs_approval_and_autogroup_internet(tmp_path):
    exit_node = {"tags": ["tag:exit"], "endpoint": "192.0.2.14:51820",
                 "advertise_exit_node": True}
    nodes = {"a": {"owner": "alice@example.com", "use_exit_node": "x"}, "x": exit_node}
    internet = {"action": "accept", "src": ["group:eng"], "dst": ["autogroup:internet:*"]}
    # Without approval, or without the grant, the node keeps its internet traffic local:
    # a policy must always be able to take access away (deny-all still compiles).
    b = make(tmp_path, nodes, pol(acls=[internet]))
    assert 'a: exit node "x" is not approved' in "\n".join(b.compiler.warnings)
    assert b.compiler.host("a").peers == []  # nothing else relates a and x
    b = make(tmp_path, nodes, pol(autoApprovers={"exitNode": ["tag:exit"]}, acls=[]))
    assert "does not grant it autogroup:internet" in "\n".join(b.compiler.warnings)
    assert b.compiler.host("a").peers == [] and b.compiler.host("x").peers == []
    b = make(tmp_path, nodes, pol(autoApprovers={"exitNode": ["tag:exit"]}, acls=[internet]))
    a_peers = {p.name: p for p in b.compiler.host("a").peers}
    assert {"0.0.0.0/0", "::/0"} <= set(a_peers["x"].allowed_ips)
    assert allowed(b, "a", "192.0.2.80", port=443)
    assert not allowed(b, "a", "10.1.2.3", port=443)  # private space is not "internet"
    assert not allowed(b, "a", "x", port=22)  # using an exit node grants nothing on it
    x = b.compiler.host("x")
    assert x.exit_node and x.forwarding and [p.name for p in x.peers] == ["a"]


def test_management_networks_are_kept_only_by_hosts_that_use_an_exit_node(tmp_path):
    exit_node = {"tags": ["tag:exit"], "endpoint": "192.0.2.14:51820",
                 "advertise_exit_node": True, "approved_exit_node": True}
    nodes = {"a": {"owner": "alice@example.com", "use_exit_node": "x"},
             "b": {"owner": "alice@example.com"}, "x": exit_node}
    internet = {"action": "accept", "src": ["group:eng"], "dst": ["autogroup:internet:*"]}
    b = make(tmp_path, nodes, pol(acls=[internet]),
             network={"management_networks": ["192.0.2.0/28", "2001:db8::/64"]})
    net = b.mesh.network
    a, other = (render.wg_quick(b.compiler.host(n), net) for n in ("a", "b"))
    assert ("PostUp = ip -4 rule del to 192.0.2.0/28 lookup main priority 1000 2>/dev/null "
            "|| true; ip -4 rule add to 192.0.2.0/28 lookup main priority 1000") in a
    assert "PreDown = ip -6 rule del to 2001:db8::/64 lookup main priority 1000 || true" in a
    assert "rule" not in other
    plan = json.loads(render.plan_json(b.compiler.compile_all(), net, [], []))
    assert plan["hosts"]["a"]["management_networks"] == ["192.0.2.0/28", "2001:db8::/64"]
    assert plan["hosts"]["b"]["management_networks"] == []


def test_the_hooks_docs_apply_md_shows_are_the_rendered_ones():
    # The module and the renderer share their paths and numbers through the host contract
    # (plugins/module_utils/wgmesh_contract.py); docs/apply.md shows the hook as rendered.
    docs = (Path(__file__).resolve().parents[2] / "docs/apply.md").read_text()
    assert f"\n    {render.FILTER_HOOK}\n" in docs


def test_expired_nodes_are_left_out(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"}, "old": {"owner": "bob@example.com",
                                                          "expires": "2025-12-31"}}
    b = make(tmp_path, nodes, pol())
    assert b.resolution.expired == ["old"] and peers(b, "a") == []


def test_output_is_deterministic_and_holds_no_private_key(tmp_path):
    nodes = {f"n{i}": {"owner": "alice@example.com" if i % 2 else "bob@example.com",
                       "endpoint": f"192.0.2.{i + 1}:51820"} for i in range(6)}
    b1 = make(tmp_path, nodes, pol())
    first = {n: render.wg_quick(h, b1.mesh.network) + render.nftables(h, b1.mesh.network)
             for n, h in b1.compiler.compile_all().items()}
    reordered = dict(reversed(list(nodes.items())))
    b2 = make(tmp_path, reordered, pol())
    second = {n: render.wg_quick(h, b2.mesh.network) + render.nftables(h, b2.mesh.network)
              for n, h in b2.compiler.compile_all().items()}
    assert first == second
    assert all("PrivateKey" not in text for text in first.values())
    plan = render.plan_json(b1.compiler.compile_all(), b1.mesh.network, [], [])
    assert json.loads(plan)["hosts"]["n0"]["peers"][0]["public_key"]


def test_routers_approving_one_prefix_are_a_primary_and_standbys(tmp_path):
    r1 = {**ROUTER, "advertise_routes": ["198.51.100.128/26"]}
    r2 = {**ROUTER, "endpoint": "192.0.2.14:51820", "advertise_routes": ["198.51.100.128/26"]}
    nodes = {"a": {"owner": "alice@example.com"}, "r1": r1, "r2": r2}
    policy = pol(autoApprovers={"routes": {"198.51.100.0/24": ["tag:router"]}},
                 acls=[{"action": "accept", "src": ["group:eng"], "dst": ["198.51.100.130:22"]}])
    # Without failover_for the first router by name is the primary.
    b = make(tmp_path, nodes, policy)
    a_peers = {p.name: p for p in b.compiler.host("a").peers}
    assert "198.51.100.128/26" in a_peers["r1"].allowed_ips and "r2" not in a_peers
    # failover_for names the primary explicitly: r1 now stands by for r2.
    nodes["r1"] = {**r1, "failover_for": "r2", "route_snat": False}
    b = make(tmp_path, nodes, policy)
    a_peers = {p.name: p for p in b.compiler.host("a").peers}
    assert "198.51.100.128/26" in a_peers["r2"].allowed_ips  # the primary carries it
    assert "r1" not in a_peers  # the standby is not used until it becomes the primary
    # Both filter alike; only r2 source-NATs (r1's LAN routes back to the mesh itself).
    for r in ("r1", "r2"):
        assert "198.51.100.130 . tcp . 22" in render.nftables(b.compiler.host(r), b.mesh.network)
    assert b.compiler.host("r2").snat and not b.compiler.host("r1").snat
    assert "masquerade" not in render.nftables(b.compiler.host("r1"), b.mesh.network)


def test_nested_routes_from_two_routers_go_by_longest_prefix(tmp_path):
    """r1 approves 10.0.0.0/8 and r2 10.33.0.0/16: peers send 10.33/16 to r2 and the rest of
    10/8 to r1, with AllowedIPs that never overlap between peers."""
    nodes = {"a": {"owner": "alice@example.com"},
             "r1": {**ROUTER, "advertise_routes": ["10.0.0.0/8"]},
             "r2": {**ROUTER, "endpoint": "192.0.2.14:51820",
                    "advertise_routes": ["10.33.0.0/16"]}}
    b = make(tmp_path, nodes, pol(autoApprovers={"routes": {"10.0.0.0/8": ["tag:router"]}},
                                  acls=[{"action": "accept", "src": ["group:eng"],
                                         "dst": ["10.0.0.0/8:22"]}]))
    a_peers = {p.name: p for p in b.compiler.host("a").peers}
    r1 = {ipaddress.ip_network(n) for n in a_peers["r1"].allowed_ips[2:]}
    r2 = {ipaddress.ip_network(n) for n in a_peers["r2"].allowed_ips[2:]}
    assert r2 == {ipaddress.ip_network("10.33.0.0/16")}
    assert not any(x.overlaps(y) for x in r1 for y in r2)
    covered = sum(n.num_addresses for n in r1 | r2)
    assert covered == 2 ** 24 and all(n.subnet_of(ipaddress.ip_network("10.0.0.0/8"))
                                      for n in r1)
    assert allowed(b, "a", "10.33.1.1") and allowed(b, "a", "10.1.1.1")
    # Only a /8 destination inside r2's prefix: r1 is not needed at all.
    b = make(tmp_path, nodes, pol(autoApprovers={"routes": {"10.0.0.0/8": ["tag:router"]}},
                                  acls=[{"action": "accept", "src": ["group:eng"],
                                         "dst": ["10.33.4.0/24:22"]}]))
    assert peers(b, "a") == ["r2"]


def test_subnet_to_subnet_gets_peers_and_filters_on_both_routers(tmp_path):
    nodes = {"r1": {**ROUTER, "advertise_routes": ["192.168.1.0/24"]},
             "r2": {**ROUTER, "endpoint": "192.0.2.14:51820",
                    "advertise_routes": ["172.16.0.0/24"]}}
    b = make(tmp_path, nodes, pol(
        autoApprovers={"routes": {"192.168.0.0/16": ["tag:router"],
                                  "172.16.0.0/12": ["tag:router"]}},
        acls=[{"action": "accept", "src": ["192.168.1.0/24"], "dst": ["172.16.0.0/24:443"]}]))
    assert allowed(b, "192.168.1.5", "172.16.0.9", port=443)
    r1, r2 = b.compiler.host("r1"), b.compiler.host("r2")
    assert [(p.name, p.allowed_ips[2:]) for p in r1.peers] == [("r2", ["172.16.0.0/24"])]
    assert [(p.name, p.allowed_ips[2:]) for p in r2.peers] == [("r1", ["192.168.1.0/24"])]
    for host in (r1, r2):  # each router forwards exactly the rule, in its direction
        assert "192.168.1.0/24 . 172.16.0.0/24 . tcp . 443" in render.nftables(
            host, b.mesh.network)


def test_a_grant_with_via_sends_its_destinations_through_the_via_routers_only(tmp_path):
    """Per viewer, as in Tailscale: alice reaches 10.44.0.0/16 through the tag:eu router,
    bob (no via) through the prefix's primary; each router forwards only its own viewers."""
    tags = {**TAGS, "tag:eu": []}
    nodes = {"a": {"owner": "alice@example.com"}, "b": {"owner": "bob@example.com"},
             "r1": {**ROUTER, "advertise_routes": ["10.0.0.0/8"]},
             "r2": {**ROUTER, "tags": ["tag:router", "tag:eu"], "endpoint": "192.0.2.14:51820",
                    "advertise_routes": ["10.44.0.0/16"]},
             "r3": {**ROUTER, "endpoint": "192.0.2.15:51820",
                    "advertise_routes": ["10.44.0.0/16"]}}
    policy = {**BASE, "tagOwners": tags,
              "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
              "grants": [{"src": ["group:eng"], "dst": ["10.44.0.0/16", "10.1.0.0/16"],
                          "ip": ["tcp:22"], "via": ["tag:eu"]},
                         {"src": ["group:eng"], "dst": ["10.2.0.0/16"], "ip": ["tcp:22"]},
                         {"src": ["bob@example.com"], "dst": ["10.44.0.0/16"],
                          "ip": ["tcp:22"]}]}
    b = make(tmp_path, nodes, policy)
    a = {p.name: p.allowed_ips[2:] for p in b.compiler.host("a").peers}
    # 10.1/16 has no tag:eu router: alice gets no route for it (no path, as in Tailscale);
    # 10.2/16 (no via) goes through r1, which carries 10/8 less the /16 r3 is primary for.
    assert set(a) == {"r1", "r2"} and a["r2"] == ["10.44.0.0/16"]
    assert not any(ipaddress.ip_network(n).overlaps(ipaddress.ip_network("10.44.0.0/16"))
                   for n in a["r1"])
    bob = {p.name: p.allowed_ips[2:] for p in b.compiler.host("b").peers}
    assert bob == {"r2": ["10.44.0.0/16"]}  # r2 sorts before r3: the prefix's primary
    def forwards(router, src, dst):
        sets = parse_sets(render.nftables(b.compiler.host(router), b.mesh.network))
        return lookup(sets["fwd4"], (int(b.resolution.alloc[src].ipv4),
                                     int(ipaddress.ip_address(dst)), 6, 22))

    assert forwards("r2", "a", "10.44.1.1") and forwards("r2", "b", "10.44.1.1")
    assert not forwards("r1", "a", "10.44.1.1") and not forwards("r3", "a", "10.44.1.1")
    assert forwards("r3", "b", "10.44.1.1")  # a standby filters like its primary
    assert not forwards("r1", "a", "10.1.1.1")  # steered away by via, and no tag:eu carries it
    assert forwards("r1", "a", "10.2.1.1")


def test_a_grant_with_via_chooses_the_exit_nodes_a_node_may_use(tmp_path):
    tags = {**TAGS, "tag:eu": []}
    exit_node = {"tags": ["tag:exit"], "endpoint": "192.0.2.14:51820",
                 "advertise_exit_node": True, "approved_exit_node": True}
    nodes = {"a": {"owner": "alice@example.com", "use_exit_node": "x"}, "x": exit_node,
             "y": {**exit_node, "tags": ["tag:exit", "tag:eu"], "endpoint": "192.0.2.15:51820"}}
    policy = {**BASE, "tagOwners": tags, "grants": [
        {"src": ["group:eng"], "dst": ["autogroup:internet"], "ip": ["*"], "via": ["tag:eu"]}]}
    b = make(tmp_path, nodes, policy)
    assert 'does not grant it autogroup:internet, so it does not use exit node "x"' in (
        "\n".join(b.compiler.warnings))
    assert peers(b, "a") == [] and "fwd4" not in b.compiler.host("x").sets
    nodes["a"]["use_exit_node"] = "y"
    b = make(tmp_path, nodes, policy)
    assert {p.name: "0.0.0.0/0" in p.allowed_ips for p in b.compiler.host("a").peers} == {
        "y": True}
    assert b.compiler.host("y").sets["fwd4"]


def test_domain_wildcards_and_danger_all(tmp_path):
    """user:*@domain names every user of that domain (untagged nodes only);
    autogroup:danger-all, a source only, names any address, inside the mesh or not."""
    nodes = {"a": {"owner": "alice@example.com"}, "o": {"owner": "oscar@other.org"},
             "t": {"tags": ["tag:web"], "owner": "alice@example.com"},
             "db": {"tags": ["tag:db"], "endpoint": "192.0.2.9:51820"},
             "r": {**ROUTER, "advertise_routes": ["10.0.0.0/8"]}}
    b = make(tmp_path, nodes, pol(
        autoApprovers={"routes": {"10.0.0.0/8": ["tag:router"]}},
        acls=[{"action": "accept", "src": ["user:*@example.com"], "dst": ["tag:db:5432"]},
              {"action": "accept", "src": ["autogroup:danger-all"], "dst": ["tag:db:443"]}],
        tests=[{"src": "user:*@example.com", "accept": ["tag:db:5432"]}]))
    assert allowed(b, "a", "db", port=5432)
    assert not allowed(b, "o", "db", port=5432) and not allowed(b, "t", "db", port=5432)
    assert allowed(b, "o", "db", port=443) and allowed(b, "10.1.2.3", "db", port=443)
    assert allowed(b, "192.0.2.77", "db", port=443)  # any address at all
    db = b.compiler.host("db")
    sets = parse_sets(render.nftables(db, b.mesh.network))
    a, o = (int(b.resolution.alloc[n].ipv4) for n in ("a", "o"))
    assert lookup(sets["in4"], (a, 6, 5432)) and not lookup(sets["in4"], (o, 6, 5432))
    assert lookup(sets["in4"], (int(ipaddress.ip_address("192.0.2.77")), 6, 443))
    assert "r" in {p.name for p in db.peers}  # routed sources arrive through the router


def test_ip_sets_add_and_remove_in_order(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"}, "b": {"owner": "bob@example.com"},
             "r": {**ROUTER, "advertise_routes": ["10.0.0.0/8"]},
             "x": {"tags": ["tag:exit"], "endpoint": "192.0.2.14:51820",
                   "advertise_exit_node": True, "approved_exit_node": True}}
    nodes["a"]["use_exit_node"] = "x"
    b = make(tmp_path, nodes, pol(
        hosts={"lab": "10.9.0.0/16"},
        ipsets={"ipset:corp": ["add 10.0.0.0/8", "remove lab", "add ipset:people"],
                "ipset:people": ["100.64.0.2"],
                "ipset:web": ["add autogroup:internet", "remove 192.0.2.0/24"]},
        autoApprovers={"routes": {"10.0.0.0/8": ["tag:router"]}},
        acls=[{"action": "accept", "src": ["group:eng"], "dst": ["ipset:corp:22"]},
              {"action": "accept", "src": ["group:eng"], "dst": ["ipset:web:443"]}]))
    assert str(b.resolution.alloc["b"].ipv4) == "100.64.0.2"
    assert allowed(b, "a", "10.1.1.1") and not allowed(b, "a", "10.9.1.1")
    assert allowed(b, "a", "b")  # the set holds b's address
    assert allowed(b, "a", "198.51.100.7", port=443)
    assert not allowed(b, "a", "192.0.2.7", port=443)  # removed from the internet part
    # The exit node forwards the set's internet part only; the router its routed part.
    x = parse_sets(render.nftables(b.compiler.host("x"), b.mesh.network))
    a = int(b.resolution.alloc["a"].ipv4)
    assert lookup(x["fwd4"], (a, int(ipaddress.ip_address("198.51.100.7")), 6, 443))
    assert not lookup(x["fwd4"], (a, int(ipaddress.ip_address("192.0.2.7")), 6, 443))
    r = parse_sets(render.nftables(b.compiler.host("r"), b.mesh.network))
    assert lookup(r["fwd4"], (a, int(ipaddress.ip_address("10.1.1.1")), 6, 22))
    assert not lookup(r["fwd4"], (a, int(ipaddress.ip_address("10.9.1.1")), 6, 22))


def test_policy_tests_with_device_less_users_and_ipv6_literals(tmp_path):
    """A user with no device under a "*" source is an identity, not a crash; an IPv6 literal
    is tested against the source node's IPv6 address."""
    nodes = {"laptop": {"owner": "alice@example.com"},
             "db": {"tags": ["tag:db"], "endpoint": "192.0.2.9:51820",
                    "address6": "fd7a:115c:a1e0::99"}}
    policy = pol(acls=[{"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]}],
                 tests=[{"src": "nobody@example.com", "accept": ["tag:db:5432"]},
                        {"src": "alice@example.com", "accept": ["fd7a:115c:a1e0::99:5432"],
                         "deny": ["fd7a:115c:a1e0::99:22"]}])
    b = make(tmp_path, nodes, policy)  # runs the tests: they pass
    assert len(b.policy.tests) == 2


def test_null_accept_env_and_check_period_read_as_absent():
    from wgmesh.policy import parse_policy

    policy = parse_policy(json.dumps(pol(ssh=[
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:web"], "users": ["root"],
         "acceptEnv": None, "checkPeriod": None}])))
    (rule,) = policy.ssh
    assert rule.users == ("root",) and rule.origin == "ssh[0]"
    assert [s.name for s in rule.src] == ["group:eng"]
    assert [s.name for s in rule.dst] == ["tag:web"]


def test_lighthouses_and_the_nodes_behind_nat_they_help(tmp_path):
    """Nodes behind NAT with relayed peers and the lighthouses become peers of each other,
    and their filters open the agent port between exactly them; the lighthouse learns which
    peers each node may ask about (its relayed ones), and no policy access comes with it."""
    nodes = {
        "pub": {"tags": ["tag:db"], "endpoint": "192.0.2.11:51820", "relay": True},
        "lh": {"tags": ["tag:web"], "endpoint": "192.0.2.12:51820", "lighthouse": True},
        "n1": {"owner": "alice@example.com"},
        "n2": {"owner": "alice@example.com"},
        "n3": {"owner": "bob@example.com"},
    }
    rules = [{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]},
             {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:22"]}]
    b = make(tmp_path, nodes, pol(acls=rules))
    comp, net = b.compiler, b.mesh.network
    n1 = comp.host("n1")
    assert {p.name: p.connection for p in n1.peers} == {"n2": "relay", "lh": "direct"}
    assert [p.roles for p in n1.peers if p.name == "lh"] == [["lighthouse"]]
    assert n1.agent.lighthouses == [("lh", str(b.alloc["lh"].ipv4), b.alloc["lh"].public_key)]
    assert [(p[0], p[3], p[4]) for p in n1.agent.punch] == [
        ("n2", f"[{comp.paths.hop_address('n2')}]:51820", "pub")]
    assert comp.host("n3").agent is None  # no relayed peer: nothing to punch
    lh = comp.host("lh")
    assert {p.name for p in lh.peers} == {"n1", "n2"}
    assert lh.agent.clients == {
        str(b.alloc["n1"].ipv4): ("n1", b.alloc["n1"].public_key, [b.alloc["n2"].public_key]),
        str(b.alloc["n2"].ipv4): ("n2", b.alloc["n2"].public_key, [b.alloc["n1"].public_key])}
    table = render.nftables(n1, net)
    assert (f"elements = {{ {b.alloc['n2'].ipv4}, {b.alloc['lh'].ipv4} }}" in table
            or f"elements = {{ {b.alloc['lh'].ipv4}, {b.alloc['n2'].ipv4} }}" in table)
    assert "ip saddr @agent4 udp sport 51822 udp dport 51822 accept" in table
    assert "ip daddr @agent4 udp sport 51822 udp dport 51822 accept" in table
    # The policy still decides everything else: n1 and lh may not talk.
    assert not allowed(b, "n1", "lh", "tcp", 443) and not allowed(b, "lh", "n1", "tcp", 22)
    bundle = render.bundle(lh, net, b.alloc["lh"].public_key)
    assert set(bundle["agent"]) == {"port", "address", "lighthouses", "punch", "clients"}
    # Without lighthouses (or without a relay to fall back to) there is no agent at all.
    del nodes["lh"]["lighthouse"]
    b = make(tmp_path, nodes, pol(acls=rules))
    assert all(b.compiler.host(n).agent is None for n in nodes)
    assert "agent" not in render.bundle(b.compiler.host("n1"), b.mesh.network, None)


def test_a_lighthouse_needs_an_endpoint(tmp_path):
    with pytest.raises(InputError, match="a lighthouse needs a public endpoint"):
        make(tmp_path, {"a": {"owner": "alice@example.com", "lighthouse": True}}, pol())


def test_a_mesh_resolver_is_the_dns_of_the_devices_the_policy_lets_ask_it(tmp_path):
    """A resolver node answers every node's name on its mesh addresses, the split domain
    whose nameserver sits in the prefix it routes, and its own resolvers' names for the rest;
    a device gets it as DNS (with the mesh domain to search) only when the policy lets it
    ask on UDP 53, and a device that may ask no resolver is named in a warning."""
    nodes = {"ns": {"tags": ["tag:dns"], "endpoint": "192.0.2.9:51820", "resolver": True,
                    "advertise_routes": ["198.51.100.0/24"]},
             "a": {"owner": "alice@example.com"},
             "phone": {"owner": "alice@example.com", "managed": False,
                       "public_key": fake_key("phone")},
             "tablet": {"owner": "bob@example.com", "managed": False,
                        "public_key": fake_key("tablet")}}
    rules = [{"action": "accept", "src": ["alice@example.com"], "proto": "udp",
              "dst": ["tag:dns:53", "198.51.100.53:53"]},
             {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:dns:80"]}]
    b = make(tmp_path, nodes, pol(acls=rules, tagOwners={**TAGS, "tag:dns": []}, autoApprovers={
        "routes": {"198.51.100.0/24": ["tag:dns"]}}),
        network={"split_dns": {"corp.example": ["198.51.100.53"]}})
    comp, net = b.compiler, b.mesh.network
    ns4, ns6 = str(b.alloc["ns"].ipv4), str(b.alloc["ns"].ipv6)
    phone, tablet, a, ns = (comp.host(n) for n in ("phone", "tablet", "a", "ns"))
    assert phone.dns_servers == (ns4, ns6)
    assert f"\nDNS = {ns4}, {ns6}, mesh.internal\n" in client_config(phone, net, None)[0]
    assert tablet.dns_servers == () and "DNS" not in client_config(tablet, net, None)[0]
    assert [w for w in comp.warnings if w.startswith("mesh resolver")] == [
        "mesh resolver: 1 device(s) may not ask any resolver (UDP 53), so mesh names do not "
        'resolve there: tablet (allow it, e.g. {"action": "accept", "src": ["group:..."], '
        '"proto": "udp", "dst": ["<resolver>:53"]})']
    # Managed nodes keep their hosts file and split DNS; only the resolver runs one.
    assert a.resolver is None and a.dns_servers == ()
    assert render.RESOLVER_HOOK not in render.wg_quick(a, net)
    assert "resolver_conf" not in render.bundle(a, net, fake_key("a"))
    assert render.RESOLVER_HOOK in render.wg_quick(ns, net)
    conf = render.bundle(ns, net, fake_key("ns"))["resolver_conf"]
    assert conf == render.resolver_conf(ns)
    lines = conf.splitlines()
    assert [x for x in lines if x.startswith("listen-address=")] == [
        f"listen-address={ns4}", f"listen-address={ns6}"]
    assert "local=/mesh.internal/" in lines and "server=/corp.example/198.51.100.53" in lines
    assert f"host-record=phone,phone.mesh.internal,{b.alloc['phone'].ipv4}," \
           f"{b.alloc['phone'].ipv6}" in lines
    assert len([x for x in lines if x.startswith("host-record=")]) == 4
    # The host's check (module_utils, which wgmesh_apply runs before anything changes).
    check_resolver_conf(conf)
    for bad in (conf + "conf-file=/tmp/x y\n", conf.replace("# wgmesh", "#"),
                conf.replace("pid-file", "pidfile"), None):
        with pytest.raises(BundleError, match="resolver configuration is malformed"):
            check_resolver_conf(bad)


def test_a_resolver_runs_only_where_ansible_does(tmp_path):
    nodes = {"a": {"owner": "alice@example.com"},
             "p": {"owner": "alice@example.com", "managed": False, "resolver": True,
                   "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}}
    with pytest.raises(InputError, match="wgmesh runs no resolver on a device Ansible does "
                                         "not manage"):
        make(tmp_path, nodes, pol())
