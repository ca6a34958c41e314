"""The offline kit's install.sh installs only what SHA256SUMS lists, and a kit signed by M of
N admins is verified before it is installed (the real build: tests/lab/test_kit.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from meshkit import make, sign_with_admins

from wgmesh import cli, kit

NODES = {"a": {"endpoint": "192.0.2.10:51820", "owner": "alice@example.com"}}
POLICY = {"acls": [{"action": "accept", "src": ["alice@example.com"],
                    "dst": ["alice@example.com:22"]}]}


def fake_kit(path: Path) -> Path:
    """A kit's shape: files, install.sh, and SHA256SUMS over them."""
    for name, data in (("project.tar", b"project"), ("wheels/wgmesh-0.1-py3-none-any.whl",
                                                     b"wheel"), ("debs/nft_1_amd64.deb", b"deb")):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    (path / "install.sh").write_text(kit.INSTALL)
    write_sums(path)
    return path


def write_sums(path: Path) -> None:
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.is_file() and p.name not in kit.UNLISTED)
    (path / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((path / f).read_bytes()).hexdigest()}  {f}\n" for f in files))


def install(k: Path, target: Path, trust: str = "none") -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(k / "install.sh"), "--python-only", str(target)],
                          capture_output=True, text=True,
                          env={**os.environ, "WGMESH_TRUST": trust})


@pytest.mark.parametrize("extra", ["debs/evil_1_amd64.deb", "wheels/evil-1-py3-none-any.whl"])
def test_install_refuses_a_file_the_sums_do_not_list(tmp_path, extra):
    k = fake_kit(tmp_path / "kit")
    (k / extra).write_bytes(b"not in the sums")
    out = install(k, tmp_path / "target")
    assert out.returncode != 0
    assert f"not listed in SHA256SUMS: {extra}" in out.stderr
    assert not (tmp_path / "target").exists()  # nothing installed


def test_install_refuses_a_file_that_differs_from_its_sum(tmp_path):
    k = fake_kit(tmp_path / "kit")
    (k / "project.tar").write_bytes(b"changed")
    out = install(k, tmp_path / "target")
    assert out.returncode != 0 and "project.tar: FAILED" in out.stdout + out.stderr
    assert not (tmp_path / "target").exists()


@pytest.fixture
def mesh(tmp_path):
    """A mesh whose changes (and kits) two of three admins sign."""
    inv = tmp_path / "inv"
    inv.mkdir()
    make(inv, NODES, POLICY)
    sign_with_admins(inv, tmp_path)
    return inv


def test_a_kit_is_verified_only_when_the_threshold_of_admins_signed_it_whole(
        mesh, tmp_path, capsys):
    k = fake_kit(tmp_path / "kit")
    verify = ["kit-verify", str(k), "-i", str(mesh)]

    def sign(name: str) -> int:
        return cli.main(["kit-sign", str(k), "--key", str(tmp_path / f"{name}.key"),
                         "-i", str(mesh)])

    assert cli.main(verify) == 1 and "not signed" in capsys.readouterr().err
    assert sign("ann") == 0
    assert cli.main(verify) == 1
    assert "1 valid signature(s) (ann), 2 needed" in capsys.readouterr().err
    assert sign("cat") == 0
    assert cli.main(verify) == 0
    assert "signed by ann, cat (threshold 2)" in capsys.readouterr().out
    # The same with a host's trust file instead of mesh.yml.
    assert cli.main(["manifest", "trust", "-i", str(mesh)]) == 0
    (tmp_path / "trust.json").write_text(capsys.readouterr().out)
    assert cli.main(["kit-verify", str(k), "--trust", str(tmp_path / "trust.json")]) == 0
    capsys.readouterr()
    # Anything added or changed after the signatures: refused, named.
    (k / "debs/evil_1_amd64.deb").write_bytes(b"x")
    assert cli.main(verify) == 1
    assert "not listed in SHA256SUMS: debs/evil_1_amd64.deb" in capsys.readouterr().err
    write_sums(k)  # sums that list the new file are new sums: no signature holds for them
    assert cli.main(verify) == 1
    assert "0 valid signature(s) (none), 2 needed; not valid for this kit: ann, cat" in \
        capsys.readouterr().err
    (k / "debs/evil_1_amd64.deb").unlink()
    write_sums(k)
    assert cli.main(verify) == 0
    capsys.readouterr()
    # A signature by a key that is no admin's, under an admin's name or its own.
    assert cli.main(["admin", "keygen", "--out", str(tmp_path / "eve.key")]) == 0
    capsys.readouterr()
    assert cli.main(["kit-sign", str(k), "--key", str(tmp_path / "eve.key"),
                     "-i", str(mesh)]) == 2
    assert "not the key of an admin" in capsys.readouterr().err
    sigs = json.loads((k / "SIGNATURES.json").read_text())
    sigs["signatures"]["eve"] = sigs["signatures"]["ann"]
    (k / "SIGNATURES.json").write_text(json.dumps(sigs))
    assert cli.main(verify) == 1
    assert "signed by eve, not an admin" in capsys.readouterr().err


def test_a_host_that_trusts_admins_installs_only_a_kit_they_signed(mesh, tmp_path, capsys):
    """install.sh on a host with a trust file checks the kit's signatures with the wgmesh it
    runs already, before anything of the kit is installed; with no wgmesh to check, it
    refuses."""
    k = fake_kit(tmp_path / "kit")
    assert cli.main(["manifest", "trust", "-i", str(mesh)]) == 0
    trust = tmp_path / "trust.json"
    trust.write_text(capsys.readouterr().out)
    fresh = install(k, tmp_path / "fresh", str(trust))
    assert fresh.returncode != 0 and "has no wgmesh in" in fresh.stderr
    target = tmp_path / "target"
    (target / ".venv/bin").mkdir(parents=True)
    (target / ".venv/bin/wgmesh").symlink_to(Path(sys.executable).parent / "wgmesh")
    unsigned = install(k, target, str(trust))
    assert unsigned.returncode != 0 and "the kit is not signed" in unsigned.stderr
    assert sorted(p.name for p in target.iterdir()) == [".venv"]  # nothing unpacked
    for name in ("ann", "ben"):
        assert cli.main(["kit-sign", str(k), "--key", str(tmp_path / f"{name}.key"),
                         "-i", str(mesh)]) == 0
    signed = install(k, target, str(trust))
    # Past the check (the fake kit's project.tar is no tar: the unpacking fails next).
    assert "signed by ann, ben (threshold 2)" in signed.stdout, signed.stderr

