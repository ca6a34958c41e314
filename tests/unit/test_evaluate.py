"""The evaluator in process (wgmesh.compile.evaluate): single packets decided from identities and
the policy's rules alone, without the filter sets (the property test holds the sets to it).
"""

from meshkit import make

NODES = {
    "alice-laptop": {"owner": "alice@example.com"},
    "alice-desk": {"owner": "alice@example.com", "ssh_policy": True},
    "alice-pi": {"owner": "alice@example.com"},
    "bob-laptop": {"owner": "bob@example.com"},
    "web1": {"tags": ["tag:web"], "ssh_policy": True},
    "db1": {"tags": ["tag:db"]},
}
POLICY = {
    "groups": {"group:ops": ["bob@example.com"]},
    "tagOwners": {"tag:web": [], "tag:db": []},
    "hosts": {"office": "198.51.100.0/24"},
    "acls": [
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:22,443"]},
        {"action": "accept", "src": ["tag:web"], "proto": "tcp", "dst": ["tag:db:5432"]},
        {"action": "accept", "src": ["office"], "dst": ["tag:web:443"]},
    ],
    "ssh": [{"action": "accept", "src": ["group:ops"], "dst": ["tag:web"], "users": ["root"]}],
}


def judge(tmp_path):
    b = make(tmp_path, NODES, POLICY)
    res, ev = b.resolution, b.evaluator

    def check(src: str, dst: str, proto: int = 6, port: int | None = 443, family: int = 4):
        s = res.endpoint_of(src, family) if src in res.index else res.endpoint_of(src)
        d = res.endpoint_of(dst, family) if dst in res.index else res.endpoint_of(dst)
        return ev.check(s, d, proto, port)

    return check


def test_the_first_rule_that_allows_a_packet_answers(tmp_path):
    check = judge(tmp_path)
    v = check("alice-laptop", "web1")
    assert (v.allow, v.rule, v.answered_by) == (True, "acls[1]", "network")
    assert check("web1", "db1", port=5432).rule == "acls[2]"
    assert not check("web1", "db1", proto=17, port=5432).allow  # proto tcp only
    assert not check("db1", "web1").allow  # default deny
    assert not check("web1", "db1", port=5433).allow


def test_autogroup_self_is_the_same_owner_and_never_a_tag(tmp_path):
    check = judge(tmp_path)
    assert check("alice-laptop", "alice-desk", port=8080).rule == "acls[0]"
    assert not check("alice-laptop", "bob-laptop", port=8080).allow
    assert not check("web1", "db1", port=8080).allow


def test_icmp_follows_any_relation_and_families_never_mix(tmp_path):
    check = judge(tmp_path)
    assert check("web1", "db1", proto=1, port=None).allow
    assert check("web1", "db1", proto=58, port=None, family=6).allow
    assert not check("db1", "web1", proto=1, port=None).allow
    assert check("alice-laptop", "web1", family=6).allow


def test_addresses_outside_the_mesh_match_prefixes_only(tmp_path):
    check = judge(tmp_path)
    assert check("198.51.100.9", "web1").rule == "acls[3]"
    assert not check("198.51.100.9", "web1", port=22).allow  # not a member


def test_port_22_of_an_ssh_policy_node_needs_an_ssh_rule_too(tmp_path):
    check = judge(tmp_path)
    ops, alice = check("bob-laptop", "web1", port=22), check("alice-laptop", "web1", port=22)
    assert (ops.allow, ops.answered_by, ops.ssh_rule) == (True, "ssh", "ssh[0]")
    assert (alice.allow, alice.answered_by) == (False, "ssh")
    assert "port 22 needs an ssh rule too" in alice.note
    # alice's desk runs SSH policy and no ssh rule names it: autogroup:self is not enough.
    desk = check("alice-laptop", "alice-desk", port=22)
    assert (desk.allow, desk.answered_by) == (False, "ssh")
    # A node without SSH policy: the network rules alone decide port 22.
    pi = check("alice-laptop", "alice-pi", port=22)
    assert (pi.allow, pi.rule, pi.answered_by) == (True, "acls[0]", "network")
