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
from docmd import block
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
    # apt's index of the packages, and what install.sh asks apt for (their dependencies follow).
    assert {"debs/Packages", "debs/wanted"} <= set(manifest["files"])
    assert (kit / "debs/Packages").read_text().count("\nFilename: ./") == len(
        [f for f in manifest["files"] if f.endswith(".deb")])
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=kit).returncode == 0

    # docs/air-gap.md's controller block, as shown, with no network: the kit's folder is
    # where it starts, the test's folder stands for /opt/wgmesh, and the lab's inventory is
    # the site's (copied in after the install, as the docs' prose says).
    target = tmp_path / "site"
    (tmp_path / "inv").mkdir()
    lab = MeshLab(tmp_path / "inv", "wgk")
    lab.lab.down()
    lab.lab.up()
    try:
        install, *rest = [c.text.replace("/opt/wgmesh", str(target)) for c in block(
            "docs/air-gap.md: sh install.sh --python-only /opt/wgmesh").commands]
        script = "\n".join(['test "$(ip -o link | wc -l)" = 1', f"cd {kit}", install,
                            f"cp -r {lab.inventory} {target}/inventories/prod", *rest])
        run = offline(script, ANSIBLE_CONFIG=str(target / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        assert "ok: 7 nodes" in run.stdout
        assert all(r["failed"] == 0 for r in recap(run.stdout).values())
        plan = lab.plan()
        pub2 = plan["hosts"]["pub2"]["addresses"][0]
        ping = lab.run("pub1", "ping", "-c", "3", "-i", "0.2", pub2, check=False)
        assert ping.returncode == 0, ping.stdout  # tag:web reaches tag:db
    finally:
        lab.lab.down()
