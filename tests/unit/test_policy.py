"""The policy package in process: the value syntax, what a valid policy becomes (the model
the compiler reads), and that every section reports its problems in the same run. The exact
messages of invalid policies are the corpus's (test_invalid_inputs.py)."""

import ipaddress

import pytest

from wgmesh.errors import InputError
from wgmesh.policy import parse_policy
from wgmesh.policy.syntax import json_path, parse_ports, parse_proto, split_hostport
from wgmesh.selectors import Kind

POLICY = """{
  // comments and trailing commas are HuJSON
  "groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
  "hosts": {"office": "198.51.100.0/24"},
  "tagOwners": {"tag:web": ["group:eng"], "tag:router": []},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:22,80-81", "office:*"]},
    {"action": "accept", "proto": "udp", "src": ["*"], "dst": ["tag:web:53"]},
  ],
  "grants": [{"src": ["tag:web"], "dst": ["10.1.0.0/16"], "ip": ["tcp:443", "icmp:*"],
              "via": ["tag:router"]}],
  "autoApprovers": {"routes": {"10.1.0.0/16": ["tag:router"]}, "exitNode": ["tag:router"]},
  "ssh": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web"],
           "users": ["root", "autogroup:nonroot"]}],
  "tests": [{"src": "alice@example.com", "accept": ["tag:web:22"], "deny": ["tag:web:25"]}],
}
"""


def test_ports_are_ranges_in_order_and_wrong_ones_are_messages():
    assert parse_ports("*") == ((0, 65535),)
    assert parse_ports("443,22,8000-8100") == ((22, 22), (443, 443), (8000, 8100))
    assert parse_ports("0") == "port range \"0\": first port must be >0, or use '*' for wildcard"
    assert parse_ports("22-") == 'port range "22-": invalid last integer'
    assert parse_ports("٣") == 'port range "٣": invalid first integer'  # ASCII digits only


def test_protocols_by_name_or_number_and_their_families():
    assert (parse_proto("TCP"), parse_proto("ipv6-icmp"), parse_proto("132")) == (6, 58, 132)
    assert parse_proto("06") == 'leading 0 not permitted in protocol number "06"'
    assert parse_proto("256").startswith('proto name "256" not known')
    assert parse_proto(6) == "proto must be a protocol name or number as text"


def test_host_and_ports_split_on_the_last_colon_and_ipv6_only_in_brackets():
    assert split_hostport("tag:web:22") == ("tag:web", "22")
    assert split_hostport("[2001:db8::1]:443") == ("2001:db8::1", "443")
    assert split_hostport("[2001:db8::]/32:*") == ("2001:db8::/32", "*")
    assert split_hostport("[tag:web]:22") is None
    assert split_hostport("22") is None
    assert json_path(("acls", 0, "dst", 1)) == "acls[0].dst[1]"
    assert json_path(("tagOwners", "tag:web")) == 'tagOwners["tag:web"]'


def test_a_valid_policy_becomes_the_model_the_compiler_reads():
    pol = parse_policy(POLICY, "policy.hujson")
    assert pol.groups == {"group:eng": ("alice@example.com", "bob@example.com")}
    assert pol.hosts == {"office": ipaddress.ip_network("198.51.100.0/24")}
    assert [str(s) for s in pol.tag_owners["tag:web"]] == ["group:eng"]
    # One rule per destination, with that destination's ports; no proto: TCP, UDP, ICMPs.
    web, office, dns, grant = pol.rules
    assert [(r.origin, r.line) for r in pol.rules] == [("acls[0]", 7), ("acls[0]", 7),
                                                       ("acls[1]", 8), ("grants[0]", 10)]
    assert [s.kind for s in web.src] == [Kind.GROUP]
    assert [(s.kind, s.name) for s in web.dst] == [(Kind.TAG, "tag:web")]
    assert [(s.kind, s.net) for s in office.dst] == [
        (Kind.PREFIX, ipaddress.ip_network("198.51.100.0/24"))]
    assert [(p.protos, p.ports) for p in web.ip] == [(frozenset({1, 6, 17, 58}),
                                                      ((22, 22), (80, 81)))]
    assert [p.ports for p in office.ip] == [((0, 65535),)]
    assert [(p.protos, p.ports) for p in dns.ip] == [(frozenset({17}), ((53, 53),))]
    assert grant.origin == "grants[0]" and grant.via == ("tag:router",)
    assert {(frozenset(p.protos), p.ports) for p in grant.ip} == {
        (frozenset({6}), ((443, 443),)), (frozenset({1}), ((0, 65535),))}
    assert [(str(net), [str(s) for s in sels]) for net, sels in pol.auto_routes] == [
        ("10.1.0.0/16", ["tag:router"])]
    assert [str(s) for s in pol.auto_exit] == ["tag:router"]
    (ssh,) = pol.ssh
    assert ssh.users == ("root", "autogroup:nonroot")
    assert ssh.logins("alice@example.com", tagged=False) == ({"root"}, True)
    (test,) = pol.tests
    assert (test.src.name, test.accept, test.deny) == ("alice@example.com", ("tag:web:22",),
                                                       ("tag:web:25",))
    assert pol.where(("acls", 1)) == (8, 5)
    assert not pol.allow_all and pol.warnings == []


def test_no_rules_at_all_allows_everything_as_tailscale_does():
    pol = parse_policy('{"groups": {}}')
    assert pol.allow_all
    (rule,) = pol.rules
    assert [s.kind for s in rule.src + rule.dst] == [Kind.ALL, Kind.ALL]


def test_every_section_reports_in_the_same_run():
    broken = (POLICY.replace('"tag:router": []', '"tag:router": ["group:nope"]')
              .replace('"tag:web:53"', '"tag:web:0"')
              .replace('"users": ["root", ', '"users": ["*", ')
              .replace('"deny": ["tag:web:25"]', '"deny": ["tag:web:25-26"]'))
    with pytest.raises(InputError) as exc:
        parse_policy(broken, "policy.hujson")
    where = [p.path for p in exc.value.problems]
    assert where == ['tagOwners["tag:router"][0]', "acls[1].dst[0]", "ssh[0].users[0]",
                     "tests[0].deny[0]"]
    assert all(p.file == "policy.hujson" and p.line > 0 for p in exc.value.problems)


def test_randomize_client_port_is_a_warning_not_an_error():
    pol = parse_policy('{"randomizeClientPort": true, "acls": []}')
    assert pol.rules == [] and "randomizeClientPort has no effect" in pol.warnings[0]
