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


def test_key_dates_are_pinned_and_old_keys_are_reported(tmp_path):
    import datetime as dt

    nodes = {n: {"tags": ["tag:srv"]} for n in ("old", "due", "new", "unknown")}
    b = make(tmp_path, nodes, POLICY, network={"key_max_age_days": 90})
    lock = tmp_path / "mesh.lock.yml"
    text = lock.read_text()
    assert text.count("key_date: 2026-01-01") == 4  # meshkit pins on its TODAY
    # Back-date three pins; drop one date (a lockfile written before key dates).
    for name, date in (("old", "2025-09-01"), ("due", "2025-10-10"), ("new", "2025-12-20")):
        text = re.sub(rf"(  {name}:\n(?:    .*\n)*?    key_date: )\S+", rf"\g<1>{date}", text)
    text = re.sub(r"(  unknown:\n(?:    .*\n)*?)    key_date: \S+\n", r"\1", text)
    lock.write_text(text)
    b = build(tmp_path, today=dt.date(2026, 1, 1), run_tests=False)
    warnings = [w for w in b.compiler.warnings if "key" in w]
    assert warnings == [
        "due: its key reaches network.key_max_age_days (90) on 2026-01-08; rotate it: "
        "ansible-playbook playbooks/rotate.yml -l due",
        "old: its key is 122 days old, past network.key_max_age_days (90); rotate it: "
        "ansible-playbook playbooks/rotate.yml -l old"]
    # Rotation forgets the date with the key; the next pin dates the new key.
    b.lock.unpin_key("old")
    b.lock.pin_key("old", fake_key("old2"), dt.date(2026, 1, 1))
    b.lock.save()
    assert "    public_key: " + fake_key("old2") + "\n    key_date: 2026-01-01" in lock.read_text()


def test_a_key_date_that_is_not_a_date_is_refused(tmp_path):
    make(tmp_path, {"a": {"tags": ["tag:srv"]}}, POLICY)
    lock = tmp_path / "mesh.lock.yml"
    lock.write_text(lock.read_text().replace("key_date: 2026-01-01", "key_date: soon"))
    with pytest.raises(InputError, match=r"nodes\.a\.key_date.*is not a date"):
        build(tmp_path, run_tests=False)
