"""module_utils/wgmesh_nftables: how a loaded table becomes the bundle's in place (the
transaction's text; tests/lab/test_table_change.py loads it into a kernel)."""

import json

import pytest

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    DECLARATION,
    declared_elements,
    element_key,
    in_place,
    json_element_text,
)

RULESET = """# a comment
table inet wgmesh
delete table inet wgmesh
table inet wgmesh {
    set in4 {
        typeof ip saddr . meta l4proto . th dport
        flags interval
        elements = {
            100.64.0.1-100.64.0.3 . tcp . 443,
            100.64.0.8/29 . udp . 1000-2000,
        }
    }
    set in4p {
        typeof ip saddr . meta l4proto
        flags interval
    }
    set agent4 {
        typeof ip saddr
        elements = { 192.0.2.7, 198.51.100.1 }
    }
    counter dropped_in { }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wg0" jump mesh_in
    }
    chain mesh_in {
        ip saddr . meta l4proto . th dport @in4 accept
        counter name "dropped_in" drop
    }
}
"""


def loaded(*items) -> str:
    """A table as canonical_table gives it."""
    return json.dumps([{kind: body} for kind, body in items])


def test_elements_compare_by_value_whatever_their_spelling():
    assert element_key("100.64.0.8/29 . udp . 1000-2000") == element_key(json_element_text(
        {"concat": [{"prefix": {"addr": "100.64.0.8", "len": 29}}, "udp",
                    {"range": [1000, 2000]}]}))
    assert element_key("10.0.0.1-10.0.0.9 . 47") == element_key(json_element_text(
        {"concat": [{"range": ["10.0.0.1", "10.0.0.9"]}, "gre"]}))
    assert element_key("fd7a::1") == element_key("fd7a:0:0::1")
    assert element_key("fd7a::/64") == element_key("fd7a::-fd7a::ffff:ffff:ffff:ffff")
    assert element_key("100.64.0.1 . tcp . 22") != element_key("100.64.0.1 . udp . 22")
    assert element_key("100.64.0.1 . tcp . 22") != element_key("100.64.0.1 . tcp . 23")
    assert json_element_text({"elem": {"val": "100.64.0.1", "comment": "x"}}) == "100.64.0.1"


def test_a_rulesets_sets_are_read_with_their_elements():
    sets = declared_elements(RULESET[RULESET.index(DECLARATION):])
    assert sets == {"in4": {element_key("100.64.0.1-100.64.0.3 . tcp . 443"),
                            element_key("100.64.0.8/29 . udp . 1000-2000")},
                    "in4p": set(),
                    "agent4": {element_key("192.0.2.7"), element_key("198.51.100.1")}}


def test_the_change_keeps_what_both_have_and_deletes_the_rest():
    live = loaded(
        ("table", {"family": "inet", "name": "wgmesh"}),
        ("counter", {"family": "inet", "name": "dropped_in", "table": "wgmesh"}),
        ("counter", {"family": "inet", "name": "dropped_relay", "table": "wgmesh"}),
        ("set", {"family": "inet", "name": "in4", "table": "wgmesh", "elem": [
            {"concat": [{"range": ["100.64.0.1", "100.64.0.3"]}, "tcp", 443]},
            {"concat": ["100.64.0.9", "tcp", 22]}]}),
        ("set", {"family": "inet", "name": "relay6", "table": "wgmesh", "elem": []}),
        ("chain", {"family": "inet", "name": "input", "table": "wgmesh", "hook": "input"}),
        ("chain", {"family": "inet", "name": "mesh_in", "table": "wgmesh"}),
        ("chain", {"family": "inet", "name": "postrouting", "table": "wgmesh"}),
        ("rule", {"family": "inet", "chain": "mesh_in", "table": "wgmesh", "expr": []}))
    change = in_place(RULESET, live)
    head, _, declaration = change.partition(DECLARATION)
    assert declaration == RULESET.partition(DECLARATION)[2]
    assert head.splitlines() == [
        "table inet wgmesh",
        "flush chain inet wgmesh input",
        "flush chain inet wgmesh mesh_in",
        "flush chain inet wgmesh postrouting",
        # 100.64.0.1-100.64.0.3 . tcp . 443 stays: never deleted, so never missing.
        "delete element inet wgmesh in4 { 100.64.0.9 . tcp . 22 }",
        "delete counter inet wgmesh dropped_relay",
        "delete set inet wgmesh relay6",
        "delete chain inet wgmesh postrouting",
    ]
    # Nothing but the rules changes when the table is the same.
    same = loaded(("set", {"family": "inet", "name": "in4", "table": "wgmesh", "elem": [
        {"concat": [{"range": ["100.64.0.1", "100.64.0.3"]}, "tcp", 443]},
        {"concat": [{"prefix": {"addr": "100.64.0.8", "len": 29}}, "udp",
                    {"range": [1000, 2000]}]}]}),
        ("chain", {"family": "inet", "name": "mesh_in", "table": "wgmesh"}))
    assert in_place(RULESET, same).partition(DECLARATION)[0].splitlines() == [
        "table inet wgmesh", "flush chain inet wgmesh mesh_in"]


def test_a_table_wgmesh_did_not_write_is_not_changed_in_place():
    """Names and elements of the loaded table go back into nft's input: anything but what
    wgmesh writes makes the module replace the table whole instead."""
    for item in (("chain", {"name": "x }\nflush ruleset\ntable inet y {"}),
                 ("set", {"name": "in4", "elem": ["100.64.0.1 }; flush ruleset; {"]}),
                 ("set", {"name": "in4", "elem": [{"concat": ["100.64.0.1", "tcp\n", 22]}]}),
                 ("counter", {"name": "Dropped"})):
        with pytest.raises(ValueError):
            in_place(RULESET, loaded(item))
