"""The policy's ssh rules, compiled: port 22 of SSH-managed nodes opens only where a network
rule and an ssh rule both allow, in the rendered sets at both ends exactly as `eval` decides,
and each host's sshd drop-in names the logins each source may use."""

import pytest
from meshkit import allowed, lookup, make, parse_sets

from wgmesh import render

NODES = {
    "alice-laptop": {"owner": "alice@example.com"},
    "alice-desk": {"owner": "alice@example.com"},
    "bob-laptop": {"owner": "bob@example.org"},
    "web1": {"tags": ["tag:web"], "endpoint": "192.0.2.11:51820"},
    "db1": {"tags": ["tag:db"], "endpoint": "192.0.2.12:51820"},
    "ci1": {"tags": ["tag:ci"], "endpoint": "192.0.2.13:51820"},
}
POLICY = """{
  "groups": {"group:eng": ["alice@example.com", "bob@example.org"]},
  "tagOwners": {"tag:web": [], "tag:db": [], "tag:ci": []},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web"], "users": ["autogroup:nonroot"]},
    {"action": "accept", "src": ["bob@example.org"], "dst": ["tag:web"], "users": ["root"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["tag:db"], "users": ["deploy"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
     "users": ["localpart:*@example.com"]},
  ],
}"""


@pytest.fixture
def mesh(tmp_path):
    return make(tmp_path, NODES, POLICY)


def test_port_22_opens_only_where_an_ssh_rule_lets_in(mesh):
    # ssh rules name these pairs...
    assert allowed(mesh, "alice-laptop", "web1")
    assert allowed(mesh, "bob-laptop", "web1")
    assert allowed(mesh, "ci1", "db1")
    assert allowed(mesh, "alice-laptop", "alice-desk")  # autogroup:self
    # ...and no others, although the network rule allows everything.
    assert not allowed(mesh, "alice-laptop", "db1")
    assert not allowed(mesh, "web1", "db1")
    assert not allowed(mesh, "bob-laptop", "alice-desk")  # someone else's device
    assert not allowed(mesh, "ci1", "web1")
    # Other ports, UDP 22 and nodes no ssh rule names keep the network rule's answer.
    assert allowed(mesh, "web1", "db1", port=5432)
    assert allowed(mesh, "web1", "db1", proto="udp", port=22)
    assert allowed(mesh, "db1", "ci1")  # ci1 is no ssh destination: plain sshd, not ours
    verdict = mesh.evaluator.check(mesh.compiler.endpoint_of("web1"),
                                   mesh.compiler.endpoint_of("db1"), 6, 22)
    assert verdict.note == "acls[0] allows it, but db1 is SSH-managed: port 22 needs an " \
                           "ssh rule too"


def test_rendered_sets_agree_with_eval_at_both_ends(mesh):
    """Every ordered pair, both families, TCP 22 and 80: the source's out set and the
    destination's in set hold the packet exactly when eval allows it."""
    comp, net = mesh.compiler, mesh.mesh.network
    sets = {n: parse_sets(render.nftables(comp.host(n), net)) for n in comp.names}
    checked = 0
    for src in comp.names:
        for dst in comp.names:
            if src == dst:
                continue
            for family in (4, 6):
                s, d = comp.endpoint_of(src, family), comp.endpoint_of(dst, family)
                for port in (22, 80):
                    want = mesh.evaluator.check(s, d, 6, port).allow
                    out = lookup(sets[src].get(f"out{family}", []), (int(d.addr), 6, port))
                    into = lookup(sets[dst].get(f"in{family}", []), (int(s.addr), 6, port))
                    assert (out, into) == (want, want), (src, dst, family, port)
                    checked += 1
    assert checked == 6 * 5 * 2 * 2


def test_sshd_dropin_names_the_logins_per_source(mesh):
    comp = mesh.compiler
    addr = {n: (str(comp.alloc[n].ipv4), str(comp.alloc[n].ipv6)) for n in comp.names}
    web = render.sshd_dropin(comp.host("web1"))
    a4, a6 = addr["alice-laptop"]
    b4, _ = addr["bob-laptop"]
    assert f"Match LocalAddress {addr['web1'][0]},{addr['web1'][1]}\n" in web
    allow = next(line for line in web.splitlines() if "AllowUsers" in line).split()[1:]
    deny = next(line for line in web.splitlines() if "DenyUsers" in line).split()[1:]
    assert f"*@{a4}" in allow and f"*@{a6}" in allow and f"root@{a4}" in deny  # nonroot
    assert f"*@{b4}" in allow and f"root@{b4}" not in deny  # bob has root as well
    db = render.sshd_dropin(comp.host("db1"))
    c4, c6 = addr["ci1"]
    assert f"    AllowUsers deploy@{c4} deploy@{c6}\n" in db and "DenyUsers" not in db
    # autogroup:self with localpart:*@example.com: alice logs in as "alice" on her own
    # devices; bob's domain is another, so his laptop gets none (all denied).
    desk = render.sshd_dropin(comp.host("alice-desk"))
    assert f"    AllowUsers alice@{a4} alice@{a6}\n" in desk
    bob = render.sshd_dropin(comp.host("bob-laptop"))
    assert "    DenyUsers *\n" in bob
    assert render.sshd_dropin(comp.host("ci1")) is None  # not SSH-managed


def test_ssh_tests_hold_or_fail_with_the_login_named(tmp_path):
    from wgmesh.build import PolicyTestFailure
    from wgmesh.errors import InputError

    tests = ('"sshTests": [\n'
             '    {"src": "alice@example.com", "dst": ["tag:web"], "accept": ["deploy"], '
             '"deny": ["root"]},\n'
             '    {"src": "bob@example.org", "dst": ["web1"], "accept": ["root"]},\n'
             '    {"src": "tag:ci", "dst": ["tag:db"], "accept": ["deploy"], "deny": ["root"]},\n'
             '    {"src": "alice@example.com", "dst": ["autogroup:self"], "accept": ["alice"],'
             ' "deny": ["bob"]},\n  ],\n')
    ok = POLICY.replace('"ssh": [', tests + '  "ssh": [', 1)
    b = make(tmp_path, NODES, ok)  # compiles: the tests hold
    assert len(b.policy.ssh_tests) == 4
    wrong = ok.replace('"dst": ["tag:db"], "accept": ["deploy"]', '"dst": ["tag:db"], '
                       '"accept": ["root"]')
    (tmp_path / "w").mkdir()
    with pytest.raises(PolicyTestFailure) as failure:
        make(tmp_path / "w", NODES, wrong)
    assert [p.message for p in failure.value.problems] == [
        "test failed: ci1 cannot log in to db1 as root, expected accept"]
    (tmp_path / "c").mkdir()
    check = ok.replace('"accept": ["alice"]', '"check": ["alice"]')
    with pytest.raises(InputError) as refused:
        make(tmp_path / "c", NODES, check)
    assert "check users need a check rule" in str(refused.value)


def test_plan_states_port_22_and_logins_as_the_filters_do(tmp_path):
    from wgmesh import plan

    (tmp_path / "base").mkdir()
    (tmp_path / "head").mkdir()
    base = make(tmp_path / "base", NODES, POLICY)
    narrowed = POLICY.replace('    {"action": "accept", "src": ["bob@example.org"], '
                              '"dst": ["tag:web"], "users": ["root"]},\n', "")
    head = make(tmp_path / "head", NODES, narrowed)
    access = plan.access(base)
    assert access["tag:ci"]["web1"]["tcp"] == [(0, 21), (23, 65535)]  # no ssh rule: no 22
    assert access["tag:ci"]["db1"]["tcp"] == [(0, 65535)]
    p = plan.compare(base, head, "base", "head")
    assert [(c.source, c.kind, c.destinations, c.ports) for c in p.access] == [
        ("bob@example.org", "loses", ["web1"], ["ssh as root"])]
    assert not p.widened and p.exit_code == plan.CHANGED


def test_a_router_forwards_no_subnet_source_to_port_22_of_an_ssh_managed_node(tmp_path):
    """eval refuses a subnet source port 22 of an SSH-managed node (no ssh rule names an
    address outside the mesh); the router's forwarding set agrees, other ports still pass."""
    nodes = {"gw": {"tags": ["tag:router"], "endpoint": "192.0.2.1:51820",
                    "advertise_routes": ["192.168.1.0/24"]},
             "web1": {"tags": ["tag:web"], "endpoint": "192.0.2.2:51820"},
             "alice": {"owner": "alice@example.com"}}
    policy = """{"tagOwners": {"tag:router": [], "tag:web": []},
      "autoApprovers": {"routes": {"192.168.1.0/24": ["tag:router"]}},
      "acls": [{"action": "accept", "src": ["192.168.1.0/24", "alice@example.com"],
                "dst": ["tag:web:*"]}],
      "ssh": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web"],
               "users": ["root"]}]}"""
    b = make(tmp_path, nodes, policy)
    comp = b.compiler
    lan, web = comp.endpoint_of("192.168.1.7"), comp.endpoint_of("web1", 4)
    fwd = parse_sets(render.nftables(comp.host("gw"), b.mesh.network))["fwd4"]
    for port in (22, 80):
        want = b.evaluator.check(lan, web, 6, port).allow
        assert want is (port == 80)
        assert lookup(fwd, (int(lan.addr), int(web.addr), 6, port)) is want
