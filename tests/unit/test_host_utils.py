"""plugins/module_utils: the helpers hosts and the controller share (one copy each)."""

import base64
import os
import stat

import pytest
from nacl.bindings import crypto_scalarmult_base

from ansible_collections.wgmesh.mesh.plugins.module_utils import wgmesh_keys
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import write_atomic


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
