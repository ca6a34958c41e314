"""plugins/module_utils: the helpers hosts and the controller share (one copy each)."""

import base64
import os
import stat

import pytest
from meshkit import plugin
from nacl.bindings import crypto_scalarmult_base

from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_keys
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import write_atomic
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import parse_dump


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
