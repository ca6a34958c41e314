"""The policy's ssh rules, compiled: on nodes that run SSH policy (ssh_policy, their choice as
in Tailscale), port 22 opens only where a network rule and an ssh rule both allow, in the
rendered sets at both ends exactly as `eval` decides, and each such host's sshd drop-in names
the logins each source may use. Elsewhere port 22 follows the network rules alone."""

import pytest
from meshkit import allowed, lookup, make, parse_sets

from wgmesh import render

NODES = {
    "alice-laptop": {"owner": "alice@example.com", "ssh_policy": True},
    "alice-desk": {"owner": "alice@example.com", "ssh_policy": True},
    "bob-laptop": {"owner": "bob@example.org", "ssh_policy": True},
    "web1": {"tags": ["tag:web"], "endpoint": "192.0.2.11:51820", "ssh_policy": True},
    "db1": {"tags": ["tag:db"], "endpoint": "192.0.2.12:51820", "ssh_policy": True},
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
    assert allowed(mesh, "db1", "ci1")  # ci1 does not run SSH policy: plain sshd, not ours
    ev, res = mesh.evaluator, mesh.resolution
    verdict = ev.check(res.endpoint_of("web1"), res.endpoint_of("db1"), 6, 22)
    assert (verdict.allow, verdict.answered_by, verdict.note) == (
        False, "ssh", "acls[0] allows it, but db1 runs SSH policy: port 22 needs an ssh "
        "rule too")
    verdict = ev.check(res.endpoint_of("ci1"), res.endpoint_of("db1"), 6, 22)
    assert (verdict.allow, verdict.rule, verdict.answered_by, verdict.ssh_rule) == (
        True, "acls[0]", "ssh", "ssh[2]")
    verdict = ev.check(res.endpoint_of("db1"), res.endpoint_of("ci1"), 6, 22)
    assert (verdict.allow, verdict.answered_by, verdict.ssh_rule) == (True, "network", None)


def test_rendered_sets_agree_with_eval_at_both_ends(mesh):
    """Every ordered pair, both families, TCP 22 and 80: the source's out set and the
    destination's in set hold the packet exactly when eval allows it."""
    comp, res, net = mesh.compiler, mesh.resolution, mesh.mesh.network
    sets = {n: parse_sets(render.nftables(comp.host(n), net)) for n in res.names}
    checked = 0
    for src in res.names:
        for dst in res.names:
            if src == dst:
                continue
            for family in (4, 6):
                s, d = res.endpoint_of(src, family), res.endpoint_of(dst, family)
                for port in (22, 80):
                    want = mesh.evaluator.check(s, d, 6, port).allow
                    out = lookup(sets[src].get(f"out{family}", []), (int(d.addr), 6, port))
                    into = lookup(sets[dst].get(f"in{family}", []), (int(s.addr), 6, port))
                    assert (out, into) == (want, want), (src, dst, family, port)
                    checked += 1
    assert checked == 6 * 5 * 2 * 2


def test_sshd_dropin_names_the_logins_per_source(mesh):
    comp, res = mesh.compiler, mesh.resolution
    addr = {n: (str(res.alloc[n].ipv4), str(res.alloc[n].ipv6)) for n in res.names}
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
    from wgmesh.errors import InputError
    from wgmesh.policytests import PolicyTestFailure

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
    from wgmesh import access as wgaccess
    from wgmesh import plan

    (tmp_path / "base").mkdir()
    (tmp_path / "head").mkdir()
    base = make(tmp_path / "base", NODES, POLICY)
    narrowed = POLICY.replace('    {"action": "accept", "src": ["bob@example.org"], '
                              '"dst": ["tag:web"], "users": ["root"]},\n', "")
    head = make(tmp_path / "head", NODES, narrowed)
    access = wgaccess.access(base)
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
             "web1": {"tags": ["tag:web"], "endpoint": "192.0.2.2:51820", "ssh_policy": True},
             "alice": {"owner": "alice@example.com"}}
    policy = """{"tagOwners": {"tag:router": [], "tag:web": []},
      "autoApprovers": {"routes": {"192.168.1.0/24": ["tag:router"]}},
      "acls": [{"action": "accept", "src": ["192.168.1.0/24", "alice@example.com"],
                "dst": ["tag:web:*"]}],
      "ssh": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web"],
               "users": ["root"]}]}"""
    b = make(tmp_path, nodes, policy)
    comp, res = b.compiler, b.resolution
    lan, web = res.endpoint_of("192.168.1.7"), res.endpoint_of("web1", 4)
    fwd = parse_sets(render.nftables(comp.host("gw"), b.mesh.network))["fwd4"]
    for port in (22, 80):
        want = b.evaluator.check(lan, web, 6, port).allow
        assert want is (port == 80)
        assert lookup(fwd, (int(lan.addr), int(web.addr), 6, port)) is want


def test_ssh_rules_apply_only_where_the_node_opted_in(tmp_path):
    """The same policy with nobody opted in: port 22 is the network rules' alone, no sshd
    drop-in is written, and the compile warns about the ssh rules that name such nodes."""
    nodes = {name: {k: v for k, v in spec.items() if k != "ssh_policy"}
             for name, spec in NODES.items()}
    b = make(tmp_path, nodes, POLICY)
    comp, res = b.compiler, b.resolution
    assert res.ssh_hosts == 0
    assert allowed(b, "alice-laptop", "db1") and allowed(b, "web1", "db1")
    assert all(render.sshd_dropin(comp.host(n)) is None for n in res.names)
    verdict = b.evaluator.check(res.endpoint_of("alice-laptop"), res.endpoint_of("web1"),
                                6, 22)
    assert (verdict.allow, verdict.answered_by) == (True, "network")
    assert verdict.note == ("web1 does not run SSH policy (ssh_policy): the network rules "
                            "alone decide port 22")
    assert ("ssh rules name alice-desk, alice-laptop, bob-laptop, db1, web1 as destination, "
            "but ssh_policy is off there: port 22 over the mesh follows the network rules "
            "alone (set ssh_policy: true on the node, or network.ssh_policy)") in comp.warnings


def test_network_ssh_policy_is_the_default_and_a_node_may_opt_out(tmp_path):
    nodes = {name: {k: v for k, v in spec.items() if k != "ssh_policy"}
             for name, spec in NODES.items()}
    nodes["bob-laptop"]["ssh_policy"] = False
    nodes["carol-phone"] = {"owner": "carol@example.com", "managed": False,
                            "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
    b = make(tmp_path, nodes, POLICY, network={"ssh_policy": True})
    comp, res = b.compiler, b.resolution
    on = {n for n in res.names if res.ssh_hosts >> res.index[n] & 1}
    # Every managed node but bob's laptop; a device wgmesh does not manage runs no sshd of ours.
    assert on == {"alice-laptop", "alice-desk", "web1", "db1", "ci1"}
    # ci1 opted in (the default) and no ssh rule names it: nobody gets port 22 over the mesh.
    assert not allowed(b, "db1", "ci1") and allowed(b, "db1", "ci1", port=80)
    assert "DenyUsers *" in render.sshd_dropin(comp.host("ci1"))
    assert ("ssh_policy is on for ci1, but no ssh rule names it as destination: nobody may "
            "use SSH to it over the mesh") in comp.warnings
    assert allowed(b, "alice-laptop", "bob-laptop")  # opted out: the network rule decides


def test_a_device_wgmesh_does_not_manage_cannot_opt_in(tmp_path):
    from wgmesh.errors import InputError

    nodes = {"carol-phone": {"owner": "carol@example.com", "managed": False,
                             "ssh_policy": True,
                             "public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}}
    with pytest.raises(InputError) as refused:
        make(tmp_path, nodes, POLICY)
    assert "nodes.carol-phone.ssh_policy: wgmesh runs no sshd on a device Ansible does not " \
           "manage" in str(refused.value)
    (tmp_path / "n").mkdir()
    with pytest.raises(InputError) as refused:
        make(tmp_path / "n", NODES, POLICY, network={"ssh_policy": "yes"})
    assert 'network.ssh_policy: must be true or false, not "yes"' in str(refused.value)


def test_policy_tests_judge_the_network_rules_and_ssh_tests_the_logins(tmp_path):
    """As in Tailscale: a `tests` accept of port 22 holds when a network rule allows it,
    though db1 runs SSH policy and no ssh rule lets alice in (the filter refuses her, and
    eval says the ssh rules answered); sshTests judge the logins."""
    tests = ('"tests": [{"src": "alice@example.com", "accept": ["db1:22"], '
             '"deny": []}],\n  "sshTests": [{"src": "alice@example.com", "dst": ["db1"], '
             '"deny": ["root", "deploy"]}],\n')
    b = make(tmp_path, NODES, POLICY.replace('"ssh": [', tests + '  "ssh": [', 1))
    assert not allowed(b, "alice-laptop", "db1")
    narrowed = POLICY.replace('"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]',
                              '"acls": [{"action": "accept", "src": ["*"], "dst": ["*:80"]}]')
    (tmp_path / "w").mkdir()
    from wgmesh.policytests import PolicyTestFailure

    with pytest.raises(PolicyTestFailure) as failure:
        make(tmp_path / "w", NODES, narrowed.replace('"ssh": [', tests + '  "ssh": [', 1))
    assert [p.message for p in failure.value.problems] == [
        "test failed: alice-desk -> db1:22 is denied, expected accept",
        "test failed: alice-laptop -> db1:22 is denied, expected accept"]


def test_plan_names_a_node_that_stops_running_ssh_policy_as_widening(tmp_path):
    from wgmesh import plan, planreport

    (tmp_path / "base").mkdir()
    (tmp_path / "head").mkdir()
    base = make(tmp_path / "base", NODES, POLICY)
    nodes = dict(NODES, db1={**NODES["db1"], "ssh_policy": False})
    head = make(tmp_path / "head", nodes, POLICY)
    p = plan.compare(base, head, "base", "head")
    assert p.ssh_policy == [{"node": "db1", "ssh_policy": "off"}]
    assert p.widened and p.exit_code == plan.WIDENED
    assert ("alice@example.com", "gains", ["db1"], ["tcp 22"]) in [
        (c.source, c.kind, c.destinations, c.ports) for c in p.access]
    assert "**the ssh rules no longer apply (widens)**" in planreport.to_markdown(p)
    back = plan.compare(head, base, "head", "base")
    assert back.ssh_policy == [{"node": "db1", "ssh_policy": "on"}] and not back.widened
    assert not [c for c in back.access if c.kind == "gains"]
