"""The repository as the Ansible collection wgmesh.mesh: built and installed with no network
(ansible-galaxy --offline), then a play that names only fully qualified names (the role
wgmesh.mesh.wgmesh, the inventory plugins wgmesh.mesh.wgmesh_lab and wgmesh.mesh.wgmesh)
builds the mesh on a lab from a folder that has nothing of the repository but the
collection, and a second run changes nothing."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import BIN, REPO
from meshlab import recap

from wgmesh.lab.runtime import Lab
from wgmesh.lab.topology import load_topology

pytestmark = pytest.mark.lab

CONFIG = """[defaults]
inventory = inv
collections_path = {collections}
interpreter_python = /usr/bin/python3
forks = 20
[inventory]
enable_plugins = wgmesh.mesh.wgmesh_lab, wgmesh.mesh.wgmesh
any_unparsed_is_failed = true
ignore_extensions = .lock.yml
[ssh_connection]
pipelining = true
"""
PLAY = """- name: Build the WireGuard mesh with the collection's role
  hosts: wgmesh
  gather_facts: false
  roles:
    - wgmesh.mesh.wgmesh
"""


def test_the_collection_builds_offline_and_runs_by_fully_qualified_names(tmp_path):
    galaxy = str(BIN / "ansible-galaxy")
    dist, collections, site = tmp_path / "dist", tmp_path / "collections", tmp_path / "site"
    out = subprocess.run([galaxy, "collection", "build", "--output-path", str(dist)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tarball = dist / "wgmesh-mesh-0.1.0.tar.gz"
    listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True)
    names = set(listing.stdout.split())
    assert {"roles/wgmesh/tasks/main.yml", "plugins/modules/wgmesh_apply.py",
            "plugins/inventory/wgmesh.py", "meta/runtime.yml"} <= names
    assert not any(n.startswith(("tests/", ".venv", "build/")) for n in names)
    # --force: ansible-galaxy skips a collection it finds installed on any configured path
    # (ansible-lint leaves one in ~/.ansible/collections), leaving -p empty.
    out = subprocess.run([galaxy, "collection", "install", "--offline", "--force", "-p",
                          str(collections), str(tarball)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert (collections / "ansible_collections/wgmesh/mesh/MANIFEST.json").exists(), out.stdout

    (site / "inv").mkdir(parents=True)
    topology = (REPO / "inventories/lab/topology.yml").read_text().replace(
        "plugin: wgmesh_lab", "plugin: wgmesh.mesh.wgmesh_lab").replace("name: wgl", "name: wgc")
    (site / "inv/topology.yml").write_text(topology)
    (site / "inv/mesh.yml").write_text(
        (REPO / "inventories/lab/mesh.yml").read_text()
        .replace("plugin: wgmesh\n", "plugin: wgmesh.mesh.wgmesh\n", 1)
        .replace("../../policies/", f"{REPO}/policies/")
        .replace("/run/wgmesh-lab/wgl/", "/run/wgmesh-lab/wgc/"))
    (site / "ansible.cfg").write_text(CONFIG.format(collections=collections))
    (site / "play.yml").write_text(PLAY)
    lab = Lab(load_topology(site / "inv/topology.yml"))
    lab.down()
    lab.up()
    env = {**os.environ, "ANSIBLE_CONFIG": str(site / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        for expect_change in (True, False):
            run = subprocess.run([str(BIN / "ansible-playbook"), "play.yml"], cwd=site,
                                 capture_output=True, text=True, timeout=600, env=env)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
            hosts = recap(run.stdout)
            assert set(hosts) == {"pub1", "pub2", "pub3", "home1", "home2", "cafe1", "branch1"}
            assert any(h["changed"] for h in hosts.values()) is expect_change
        peers = subprocess.run(lab.exec_argv("pub1", ["wg", "show", "wg0", "peers"]),
                               capture_output=True, text=True).stdout.split()
        assert len(peers) >= 2
    finally:
        lab.down()
