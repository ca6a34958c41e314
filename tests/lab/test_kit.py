"""The offline kit: built here (the package registries are reachable), then installed and
used in a network namespace with no network at all (only a loopback that is down): the
Python side installs from the kit's wheels alone, and the installed wgmesh compiles a mesh
and runs site.yml on a lab (reached through the lab's ProxyCommand, which enters the lab's
own namespace; the install itself has no route anywhere)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import BIN
from meshlab import MeshLab, recap

pytestmark = pytest.mark.lab


def offline(script: str, **env: str) -> subprocess.CompletedProcess:
    """A shell script in a new network namespace: no interface but a loopback that is down."""
    return subprocess.run(["unshare", "--net", "sh", "-euc", script], capture_output=True,
                          text=True, timeout=900, env={**os.environ, **env})


def test_kit_installs_and_runs_with_no_network(tmp_path):
    kit = tmp_path / "kit"
    built = subprocess.run([str(BIN / "wgmesh"), "kit", "--out", str(kit)], capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((kit / "manifest.json").read_text())
    for package in ("wireguard-tools", "wireguard-go", "nftables", "dnsmasq-base", "python3"):
        assert package in manifest["debian_packages"]
        assert any(f.startswith(f"debs/{package}_") for f in manifest["files"]), package
    assert any(f.startswith("wheels/wgmesh-") for f in manifest["files"])
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=kit).returncode == 0

    target = tmp_path / "site"
    out = offline(f"test \"$(ip -o link | wc -l)\" = 1\n"
                  f"sh {kit}/install.sh --python-only {target}\n"
                  f"{target}/.venv/bin/wgmesh check -i {target}/inventories/example")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok: 5 nodes" in out.stdout

    (tmp_path / "inv").mkdir()
    lab = MeshLab(tmp_path / "inv", "wgk")
    lab.lab.down()
    lab.lab.up()
    try:
        run = offline(f"cd {target}\n.venv/bin/ansible-playbook -i {lab.inventory} site.yml",
                      ANSIBLE_CONFIG=str(target / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                      PATH=f"{target}/.venv/bin:{os.environ['PATH']}")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert all(r["failed"] == 0 for r in recap(run.stdout).values())
        plan = lab.plan()
        pub2 = plan["hosts"]["pub2"]["addresses"][0]
        ping = lab.run("pub1", "ping", "-c", "3", "-i", "0.2", pub2, check=False)
        assert ping.returncode == 0, ping.stdout  # tag:web reaches tag:db
    finally:
        lab.lab.down()
