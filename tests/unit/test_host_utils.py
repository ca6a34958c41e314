"""plugins/module_utils: the helpers hosts and the controller share (one copy each)."""

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from meshkit import plugin
from nacl.bindings import crypto_scalarmult_base

from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_keys
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import write_atomic
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import table_drift
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import (
    parse_dump,
    peer_names,
    peer_paths,
)

TESTS = Path(__file__).resolve().parents[1]


def test_x25519_in_plain_python_is_rfc_7748s():
    """The last-resort public key (no wg, no PyNaCl) is RFC 7748's: its test vector, and
    PyNaCl's answer for keys wg would make."""
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert wgmesh_keys.x25519(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    for _ in range(5):
        raw = os.urandom(32)
        assert wgmesh_keys.x25519(raw) == crypto_scalarmult_base(raw)


@pytest.mark.parametrize("tools", ["wg", "pynacl", "python"])
def test_every_way_to_a_public_key_gives_the_same_key(monkeypatch, tools):
    private = base64.b64encode(os.urandom(32)).decode()
    want = base64.b64encode(crypto_scalarmult_base(base64.b64decode(private))).decode()
    if tools != "wg":
        monkeypatch.setattr(wgmesh_keys.shutil, "which", lambda _: None)
    if tools == "python":
        import builtins
        real = builtins.__import__

        def no_nacl(name, *args, **kw):
            if name.startswith("nacl"):
                raise ImportError(name)
            return real(name, *args, **kw)
        monkeypatch.setattr(builtins, "__import__", no_nacl)
    assert wgmesh_keys.public_of(private) == want


def test_write_atomic_replaces_whole_keeps_or_sets_the_mode_and_removes(tmp_path):
    path = tmp_path / "sub/f"
    write_atomic(path, "one\n", 0o600, dir_mode=0o700)
    assert path.read_text() == "one\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_atomic(path, b"two\n", None)  # keeps 0600
    assert path.read_bytes() == b"two\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["f"]  # no temporary file left
    write_atomic(path, None, 0o644)
    assert not path.exists()


DUMP = ("cHJpdmF0ZQ==\tpubA=\t51820\toff\n"
        "pubB=\t(none)\t192.0.2.12:51820\t100.64.0.2/32,fd7a:115c:a1e0::2/128\t1796600000\t"
        "1234\t5678\t25\n"
        "pubC=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")


def test_wg_show_dump_is_read_once_for_hosts_and_controller():
    peer_status = plugin("plugins/filter/wgmesh.py").peer_status
    port, peers = parse_dump(DUMP)
    assert port == 51820
    assert peers["pubB="] == {"endpoint": "192.0.2.12:51820", "handshake": 1796600000,
                              "allowed": {"100.64.0.2/32", "fd7a:115c:a1e0::2/128"},
                              "rx": 1234, "tx": 5678, "keepalive": 25}
    assert peers["pubC="] == {"endpoint": None, "allowed": set(), "handshake": 0, "rx": 0,
                              "tx": 0, "keepalive": 0}
    assert parse_dump("") == (0, {})
    plan = {"peers": [{"name": "b", "public_key": "pubB=", "connection": "direct"},
                      {"name": "c", "public_key": "pubC=", "connection": "relay",
                       "relay": "r"},
                      {"name": "d", "public_key": "pubD=", "connection": "lan"}]}
    lines = peer_status(DUMP, plan)
    assert lines[0].startswith("b direct, endpoint 192.0.2.12:51820, handshake ")
    assert lines[0].endswith("rx/tx 1234/5678 B")
    assert lines[1].startswith("c relay via r, endpoint (none), handshake never")
    assert lines[2] == "d          lan     NOT CONFIGURED"


def table(elements, rules=("accept",)):
    """A table as live_table gives it: normalized nft JSON."""
    return json.dumps([
        {"table": {"family": "inet", "name": "wgmesh"}},
        {"set": {"family": "inet", "name": "in4", "table": "wgmesh", "elem": elements}},
        *({"rule": {"family": "inet", "chain": "input", "expr": [r]}} for r in rules)],
        sort_keys=True, separators=(",", ":"))


def test_table_drift_names_the_elements_and_rules():
    want = table([{"concat": ["100.64.0.1", "tcp", 22]}])
    assert table_drift(want, want) == []
    extra = table([{"concat": ["100.64.0.1", "tcp", 22]}, {"concat": ["100.64.0.9", "tcp", 5432]}])
    words = table_drift(want, extra)
    assert words == ['set in4 has 1 element(s) not in the bundle: '
                     '{"concat":["100.64.0.9","tcp",5432]}']
    assert table_drift(want, table([])) == [
        'set in4 lacks 1 element(s) of the bundle: {"concat":["100.64.0.1","tcp",22]}']
    assert table_drift(want, table([{"concat": ["100.64.0.1", "tcp", 22]}],
                                         rules=("accept", "drop"))) == [
        "chain input: 2 rules differ from the bundle's 1"]
    assert table_drift(want, None) == ["table inet wgmesh is not loaded"]


def test_peer_paths_come_from_the_rendered_comments():
    """Name, connection and relay of each peer, roles or not (golden alice-desktop)."""
    conf = (TESTS / "golden" / "alice-desktop" / "wg0.conf").read_text()
    paths = peer_paths(conf)
    assert sorted((p["name"], p["connection"], p["relay"]) for p in paths.values()) == [
        ("alice-laptop", "lan", None), ("bob-laptop", "relay", "web1"),
        ("office-gw", "direct", None), ("web1", "direct", None)]
    assert sorted(peer_names(conf).values()) == ["alice-laptop", "bob-laptop", "office-gw",
                                                 "web1"]
