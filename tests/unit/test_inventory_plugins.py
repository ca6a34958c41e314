"""The inventory plugins, driven through Ansible's own InventoryManager."""

import shutil
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from meshkit import fake_key

from wgmesh.build import build

REPO = Path(__file__).resolve().parents[2]
GOLDEN_INPUT = REPO / "tests" / "data" / "golden-mesh"


@pytest.fixture(scope="module", autouse=True)
def plugins():
    init_plugin_loader()


def inventory(path) -> InventoryManager:
    return InventoryManager(loader=DataLoader(), sources=[str(path)])


def test_mesh_groups_and_hostvars(tmp_path):
    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(GOLDEN_INPUT / name, tmp_path / name)
    b = build(tmp_path, run_tests=False)
    b.lock.pin_key("db1", fake_key("db1"))
    b.lock.save()
    inv = inventory(tmp_path / "mesh.yml")
    groups = {g: sorted(h.name for h in inv.groups[g].get_hosts()) for g in inv.groups}
    assert groups["wgmesh"] == ["alice-desktop", "alice-laptop", "bob-laptop", "db1",
                                "exit1", "office-gw", "web1"]  # not the unmanaged phone
    assert groups["tag_web"] == ["web1"]
    assert groups["owner_alice_example_com"] == ["alice-desktop", "alice-laptop"]
    assert groups["wgmesh_subnet_routers"] == ["office-gw"]
    assert groups["wgmesh_exit_nodes"] == ["exit1"]
    assert groups["wgmesh_relays"] == ["web1"]
    db = inv.get_host("db1").vars
    assert db["ansible_host"] == "192.0.2.12"
    assert db["wgmesh_tags"] == ["tag:db"]
    assert db["wgmesh_address"] == "100.64.0.5"
    assert db["wgmesh_public_key_pinned"] == fake_key("db1")
    # The plugin reads the lockfile but never writes it.
    assert "alice-laptop" in (tmp_path / "mesh.lock.yml").read_text()
    before = (tmp_path / "mesh.lock.yml").read_text()
    (tmp_path / "mesh.yml").write_text((tmp_path / "mesh.yml").read_text() + (
        "  newbie:\n    ansible_host: 192.0.2.99\n    owner: bob@example.com\n"))
    inv = inventory(tmp_path / "mesh.yml")
    assert inv.get_host("newbie").vars["wgmesh_address"] == "100.64.0.9"
    assert (tmp_path / "mesh.lock.yml").read_text() == before


def test_bad_mesh_is_a_parse_error_naming_the_place(tmp_path, capfd):
    shutil.copy(GOLDEN_INPUT / "policy.hujson", tmp_path / "policy.hujson")
    (tmp_path / "mesh.yml").write_text("plugin: wgmesh\npolicy: policy.hujson\nnodes:\n"
                                       "  a: {ansible_host: 192.0.2.1, owner: nobody}\n")
    # ansible.cfg makes any unparsed source fatal, so no play runs on a broken mesh.
    with pytest.raises(AnsibleError, match="failed to parse inventory source"):
        inventory(tmp_path / "mesh.yml")
    # Ansible wraps warnings to the terminal's width (2.18 at other places than 2.19).
    said = " ".join(capfd.readouterr().err.split())
    assert 'mesh.yml:4:32: nodes.a.owner: owner "nobody" is not a user' in said


def test_lab_topology_hosts_and_connection(tmp_path):
    inv = inventory(REPO / "inventories" / "lab" / "topology.yml")
    assert sorted(h.name for h in inv.groups["lab_natted"].get_hosts()) == [
        "branch1", "cafe1", "home1", "home2"]
    home1 = inv.get_host("home1").vars
    assert home1["ansible_host"] == "198.51.100.10"
    assert "nsenter --net=/run/netns/wgl-fabric nc %h %p" in home1["ansible_ssh_common_args"]
    assert home1["wgmesh_lab_nat_kind"] == "endpoint-independent"


def test_connection_settings_in_group_vars_beside_mesh_yml_reach_the_hosts(tmp_path):
    """mesh.yml defines the mesh; who Ansible connects as lives in group_vars beside it, as
    docs/apply.md shows, and the mesh's hosts get it."""
    import json
    import subprocess
    import sys

    for name in ("mesh.yml", "policy.hujson"):
        shutil.copy(GOLDEN_INPUT / name, tmp_path / name)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars/all.yml").write_text("ansible_user: admin\nansible_become: true\n")
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i",
                          str(tmp_path), "--host", "web1"], capture_output=True, text=True,
                         cwd=REPO, env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                                        "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    host = json.loads(out.stdout)
    assert (host["ansible_user"], host["ansible_become"]) == ("admin", True)
    assert host["ansible_host"] == "192.0.2.11"  # from mesh.yml
