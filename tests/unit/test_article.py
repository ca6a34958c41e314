"""The article's ACL example (shared/reference/mesh-vpn-architecture.txt) and the four
questions after it, answered by the compiler."""

from pathlib import Path

import pytest
from meshkit import allowed, make, peers

POLICY = (Path(__file__).resolve().parents[2] / "policies" / "article.hujson").read_text()

NODES = {
    "alice-laptop": {"owner": "alice@example.com"},
    "bob-laptop": {"owner": "bob@example.com"},
    "carol-laptop": {"owner": "carol@example.com"},
    "dave-laptop": {"owner": "dave@example.com"},
    "web1": {"tags": ["tag:prod-web"], "endpoint": "192.0.2.11:51820"},
    "web2": {"tags": ["tag:prod-web"], "endpoint": "192.0.2.12:51820"},
    "db1": {"tags": ["tag:prod-db"], "endpoint": "192.0.2.13:51820"},
}


@pytest.fixture
def article(tmp_path):
    return make(tmp_path, NODES, POLICY)


def test_the_reading_of_the_rules(article):
    for port in (80, 443, 22):
        assert allowed(article, "alice-laptop", "web1", port=port)
        assert allowed(article, "bob-laptop", "web2", port=port)
    assert not allowed(article, "bob-laptop", "web1", port=8080)
    assert allowed(article, "carol-laptop", "db1", port=5432)
    assert allowed(article, "carol-laptop", "db1", port=22)
    assert not allowed(article, "carol-laptop", "web1", port=22)
    assert allowed(article, "web1", "db1", port=5432)
    assert not allowed(article, "web1", "db1", port=22)
    assert not allowed(article, "dave-laptop", "web1", port=443)  # in no group: nothing


def test_q1_who_can_access_prod_db_on_5432(article):
    who = sorted(n for n in NODES if n != "db1" and allowed(article, n, "db1", port=5432))
    assert who == ["alice-laptop", "carol-laptop", "web1", "web2"]


def test_q2_prod_web_cannot_reach_prod_web(article):
    for proto, port in (("tcp", 22), ("tcp", 80), ("tcp", 443), ("udp", 53), ("icmp", None)):
        assert not allowed(article, "web1", "web2", proto, port)
        assert not allowed(article, "web2", "web1", proto, port)
    # Need to know: web1 is not even told web2 exists.
    assert "web2" not in peers(article, "web1")
    assert "web1" not in peers(article, "web2")


def test_q3_revoking_alice_is_removing_her_from_both_groups(tmp_path):
    revoked = POLICY.replace('["alice@example.com", "bob@example.com"]', '["bob@example.com"]')
    revoked = revoked.replace('["alice@example.com", "carol@example.com"]', '["carol@example.com"]')
    revoked = revoked.replace('{"src": "alice@example.com", "accept": ["tag:prod-db:5432"]},', "")
    b = make(tmp_path, NODES, revoked)
    for dst in ("web1", "web2", "db1"):
        for port in (22, 80, 443, 5432):
            assert not allowed(b, "alice-laptop", dst, port=port)
    assert peers(b, "alice-laptop") == []
    assert "alice-laptop" not in peers(b, "db1")
    assert allowed(b, "bob-laptop", "web1", port=443)  # nobody else lost anything


def test_q4_carol_ssh_to_prod_web_needs_a_network_rule(tmp_path, article):
    """With the servers' own sshd (no ssh_policy), port 22 is the network rules' business:
    carol, on call, reaches prod-db's port 22 and not prod-web's; a network rule gives her
    prod-web's."""
    assert allowed(article, "carol-laptop", "db1", port=22)
    assert not allowed(article, "carol-laptop", "web1", port=22)
    changed = POLICY.replace(
        '{"action": "accept", "src": ["tag:prod-web"],',
        '{"action": "accept", "src": ["carol@example.com"], "dst": ["tag:prod-web:22"]},\n'
        '    {"action": "accept", "src": ["tag:prod-web"],')
    b = make(tmp_path, NODES, changed)
    assert allowed(b, "carol-laptop", "web1", port=22)
    assert not allowed(b, "carol-laptop", "web1", port=443)
    assert "web1" in peers(b, "carol-laptop")


def test_q4_on_servers_that_run_ssh_policy_logins_need_an_ssh_rule_too(tmp_path):
    """The servers opt in (ssh_policy, as `tailscale set --ssh`): carol's network rule to
    prod-db's port 22 stands (the article's test of it passes unchanged, as at Tailscale),
    but no ssh rule lets her in, so the filter refuses her and eval says the ssh rules
    answered. An ssh rule for her opens it, with the logins it names."""
    nodes = {n: dict(spec, ssh_policy=True) if "tags" in spec else spec
             for n, spec in NODES.items()}
    b = make(tmp_path, nodes, POLICY)  # the policy's tests and sshTests hold
    res = b.resolution
    assert not allowed(b, "carol-laptop", "db1", port=22)
    assert allowed(b, "carol-laptop", "db1", port=5432)
    assert allowed(b, "alice-laptop", "db1", port=22)  # an engineer, on call too
    verdict = b.evaluator.check(res.endpoint_of("carol-laptop"), res.endpoint_of("db1"),
                                6, 22)
    assert (verdict.allow, verdict.answered_by) == (False, "ssh")
    assert verdict.note == "acls[1] allows it, but db1 runs SSH policy: port 22 needs an ssh " \
                           "rule too"
    on_call = POLICY.replace('"ssh": [', '"ssh": [\n    {"action": "accept", "src": '
                             '["group:on-call"], "dst": ["tag:prod-db"], '
                             '"users": ["autogroup:nonroot"]},').replace(
        '"deny": ["root", "ubuntu"]}', '"deny": ["root"]}')
    (tmp_path / "o").mkdir()
    b = make(tmp_path / "o", nodes, on_call)
    assert allowed(b, "carol-laptop", "db1", port=22)
    assert not allowed(b, "carol-laptop", "web1", port=22)
    assert b.resolution.ssh_logins(b.resolution.index["db1"],
                                 b.resolution.index["carol-laptop"]) == ((), True)
