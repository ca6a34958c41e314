"""The rendered nftables table's fast path: a connection passes on the table's generation
once it has passed the sets, and every different table has another generation, so a change
checks every open connection again (docs/nftables.md)."""

import re

from meshkit import make

from wgmesh import render

NODES = {"a": {"owner": "alice@example.com"},
         "b": {"owner": "bob@example.com", "endpoint": "192.0.2.2:51820"}}
POLICY = """{"acls": [{"action": "accept", "src": ["alice@example.com"],
                       "dst": ["bob@example.com:80"]}]}"""


def table(tmp_path, policy: str = POLICY, host: str = "b") -> str:
    b = make(tmp_path, NODES, policy)
    return render.nftables(b.compiler.host(host), b.mesh.network)


def chains(text: str) -> dict[str, list[str]]:
    return {name: [line.strip() for line in body.strip().splitlines()]
            for name, body in re.findall(r"^    chain (\w+) \{\n(.*?)^    \}", text, re.M | re.S)}


def test_every_pass_of_the_sets_marks_the_connection_with_the_generation(tmp_path):
    text = table(tmp_path)
    generation = re.search(r"ct mark (0x[0-9a-f]{8}) accept", text).group(1)
    assert int(generation, 16) != 0  # the mark of a connection nothing marked
    found = chains(text)
    for name in ("mesh_in", "mesh_out", "mesh_fwd"):
        # The fast path comes first, before the state map and any set lookup.
        assert found[name][0] == f"ct mark {generation} accept", found[name]
        for line in found[name] + found[f"{name}_reply"]:
            if "@" in line:  # a set lookup: passing it marks the connection
                assert line.endswith(f" ct mark set {generation} accept"), line
    for name in ("input", "output", "forward", "hop_in", "hop_out"):
        assert not any("ct mark" in line for line in found[name])
    assert "%generation%" not in text


def test_the_generation_changes_with_the_table_and_only_with_it(tmp_path):
    def gen(text):
        return re.search(r"ct mark (0x[0-9a-f]{8}) accept", text).group(1)

    for d in ("one", "two", "port", "other"):
        (tmp_path / d).mkdir()
    first, again = table(tmp_path / "one"), table(tmp_path / "two")
    assert first == again and gen(first) == gen(again)  # deterministic
    moved = table(tmp_path / "port", POLICY.replace(":80", ":81"))
    assert gen(moved) != gen(first)
    # Another host's table, another generation (each host's conntrack is its own anyway).
    assert gen(table(tmp_path / "other", host="a")) != gen(first)
