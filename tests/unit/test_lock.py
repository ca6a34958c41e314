"""mesh.lock.yml: stable, never reused, round-trip, atomic."""

import re

import pytest
from meshkit import fake_key, make

from wgmesh.build import build
from wgmesh.errors import InputError

POLICY = {"tagOwners": {"tag:srv": []}}


def addrs(b):
    return {n: (str(a.ipv4), str(a.ipv6)) for n, a in b.alloc.items()}


def test_addresses_are_stable_and_never_reused(tmp_path):
    b = make(tmp_path, {"c": {"tags": ["tag:srv"]}, "a": {"tags": ["tag:srv"]}}, POLICY)
    first = addrs(b)
    assert first == {"a": ("100.64.0.1", "fd7a:115c:a1e0::1"),
                     "c": ("100.64.0.2", "fd7a:115c:a1e0::2")}
    # Adding a node that sorts first moves nobody.
    b = make(tmp_path, {"c": {"tags": ["tag:srv"]}, "a": {"tags": ["tag:srv"]},
                        "0new": {"tags": ["tag:srv"]}}, POLICY)
    assert addrs(b)["a"] == first["a"] and addrs(b)["c"] == first["c"]
    assert addrs(b)["0new"] == ("100.64.0.3", "fd7a:115c:a1e0::3")
    # Removing a node retires its address; a newcomer does not get it.
    b = make(tmp_path, {"c": {"tags": ["tag:srv"]}, "0new": {"tags": ["tag:srv"]},
                        "d": {"tags": ["tag:srv"]}}, POLICY)
    assert addrs(b)["d"] == ("100.64.0.4", "fd7a:115c:a1e0::4")
    lock = (tmp_path / "mesh.lock.yml").read_text()
    assert "retired:\n  a:\n    ipv4: 100.64.0.1" in lock
    # The node itself may come back to its own address.
    b = make(tmp_path, {"c": {"tags": ["tag:srv"]}, "a": {"tags": ["tag:srv"]},
                        "0new": {"tags": ["tag:srv"]}, "d": {"tags": ["tag:srv"]}}, POLICY)
    assert addrs(b)["a"] == first["a"]


def test_comments_and_order_survive_and_unchanged_means_unwritten(tmp_path):
    make(tmp_path, {"a": {"tags": ["tag:srv"]}, "b": {"tags": ["tag:srv"]}}, POLICY)
    path = tmp_path / "mesh.lock.yml"
    text = path.read_text().replace("  b:\n", "  # b is the backup server\n  b:\n")
    path.write_text(text)
    before = path.stat().st_mtime_ns
    b = build(tmp_path, run_tests=False)
    assert b.lock.save() is False and path.stat().st_mtime_ns == before
    make(tmp_path, {"a": {"tags": ["tag:srv"]}, "b": {"tags": ["tag:srv"]},
                    "c": {"tags": ["tag:srv"]}}, POLICY)
    after = path.read_text()
    assert "# b is the backup server\n  b:\n" in after
    assert after.index("  a:") < after.index("  b:") < after.index("  c:")


def test_pins_conflicts_and_exhaustion(tmp_path):
    with pytest.raises(InputError, match="already taken by node a"):
        make(tmp_path, {"a": {"tags": ["tag:srv"], "address": "100.64.0.7"},
                        "b": {"tags": ["tag:srv"], "address": "100.64.0.7"}}, POLICY)
    assert not (tmp_path / "mesh.lock.yml").exists()
    b = make(tmp_path, {"a": {"tags": ["tag:srv"], "address": "100.64.0.7"}}, POLICY)
    assert str(b.alloc["a"].ipv4) == "100.64.0.7"
    small = {"ipv4_pool": "100.64.0.0/30"}
    (tmp_path / "small").mkdir()
    with pytest.raises(InputError, match="the ipv4 pool is exhausted"):
        make(tmp_path / "small", {f"n{i}": {"tags": ["tag:srv"]} for i in range(3)}, POLICY,
             network=small)


def test_key_pinning(tmp_path):
    b = make(tmp_path, {"a": {"tags": ["tag:srv"]}}, POLICY, keys=False)
    k1, k2 = fake_key("k1"), fake_key("k2")
    assert b.lock.pin_key("a", k1) is None
    assert b.lock.pin_key("a", k1) is None
    assert b.lock.pin_key("a", k2) == k1


def test_a_lockfile_read_fast_is_written_round_trip(tmp_path):
    """Read-only commands read the lockfile with libyaml; a run that pins keys or adds
    nodes writes it through ruamel, keeping comments and name order."""
    make(tmp_path, {"b": {"tags": ["tag:srv"]}, "d": {"tags": ["tag:srv"]}}, POLICY)
    lock = tmp_path / "mesh.lock.yml"
    lock.write_text(lock.read_text().replace("ipv4: 100.64.0.2\n", "ipv4: 100.64.0.2  # db\n"))
    b = make(tmp_path, {"a": {"tags": ["tag:srv"]}, "b": {"tags": ["tag:srv"]},
                        "c": {"tags": ["tag:srv"]}, "d": {"tags": ["tag:srv"]}}, POLICY)
    text = lock.read_text()
    assert "  d:\n    ipv4: 100.64.0.2  # db\n" in text
    assert [m for m in re.findall(r"^  ([a-d]):$", text, re.M)] == ["a", "b", "c", "d"]
    assert all(b.lock.nodes[n]["public_key"] == fake_key(n) for n in "abcd")
    assert build(tmp_path).lock.changed is False  # read back: nothing to write
