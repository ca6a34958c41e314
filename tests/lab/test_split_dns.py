"""Split DNS on the lab: corp.example is answered by a nameserver on the office LAN (legacy,
behind the subnet router pub3). home1 and home2 (group:eng, which the policy lets reach it)
resolve corp.example through the mesh, mesh names through their hosts file, and every other
name through the resolver they had before (a nameserver on the internet segment, web). The
lab hosts run no systemd-resolved, so each gets wgmesh's own dnsmasq."""

from __future__ import annotations

import pytest
from conftest import REPO
from meshlab import MeshLab, reboot

pytestmark = pytest.mark.lab

RULE = '{"action": "accept", "src": ["group:eng"], "dst": ["legacy:53"]},'
# Under the lab mesh's own network section.
SPLIT = "network:\n  split_dns:\n    corp.example: [198.51.100.130]\n"
BEFORE = "nameserver 192.0.2.80\nsearch example.net\n"


def dnsmasq(addr: str, name: str, answer: str) -> list[str]:
    """A nameserver that knows one name (and nothing else)."""
    return ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
            f"--listen-address={addr}", "--bind-interfaces", f"--address=/{name}/{answer}",
            "--pid-file=", "--log-facility=-"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("splitdns")
    (tmp / "inv").mkdir()
    policy = (REPO / "policies/lab.hujson").read_text().replace('"acls": [',
                                                                '"acls": [\n    ' + RULE, 1)
    (tmp / "dns.hujson").write_text(policy)
    mesh = (REPO / "inventories/lab/mesh.yml").read_text().replace(
        "../../policies/lab.hujson", str(tmp / "dns.hujson")).replace("network:\n", SPLIT, 1)
    lab = MeshLab(tmp / "inv", "wgx", mesh=mesh)
    lab.mesh_text = (tmp / "inv/mesh.yml").read_text()  # as MeshLab wrote it for this lab
    lab.lab.down()
    lab.lab.up()
    servers = [lab.start("legacy", dnsmasq("198.51.100.130", "db.corp.example",
                                           "198.51.100.140")),
               lab.start("web", dnsmasq("192.0.2.80", "www.other.example", "192.0.2.99"))]
    for host in ("home1", "pub1"):  # the resolver each host had before wgmesh
        lab.run(host, "sh", "-c", "cat > /etc/resolv.conf", stdin=BEFORE)
    run = lab.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    lab.settle()
    yield lab
    for p in servers:
        lab.stop(p)
    lab.lab.down()


def resolve(lab, host: str, name: str) -> str:
    out = lab.run(host, "getent", "ahostsv4", name, check=False, timeout=20)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout else ""


def test_split_domain_mesh_names_and_the_rest(lab):
    plan = lab.plan()
    assert resolve(lab, "home1", "db.corp.example") == "198.51.100.140"  # via pub3 to legacy
    assert resolve(lab, "home1", "www.other.example") == "192.0.2.99"  # its old resolver
    assert resolve(lab, "home1", "pub1") == plan["hosts"]["pub1"]["addresses"][0]
    assert resolve(lab, "home1", "pub1.mesh.internal") == plan["hosts"]["pub1"]["addresses"][0]
    resolv = lab.run("home1", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.153" in resolv and "search example.net" in resolv


def test_a_host_the_policy_keeps_from_the_nameserver_is_left_as_it_was(lab):
    assert lab.run("pub1", "cat", "/etc/resolv.conf").stdout == BEFORE
    assert resolve(lab, "pub1", "www.other.example") == "192.0.2.99"
    assert resolve(lab, "pub1", "db.corp.example") == ""


def test_split_dns_comes_back_with_the_interface_after_a_reboot(lab):
    """A reboot ends wgmesh's dnsmasq (a process, not a service) while resolv.conf still
    names it: the mesh interface's own hook starts it again as the interface comes up, with
    no Ansible run."""
    assert "dnsmasq --conf-file=/etc/wgmesh/dnsmasq.conf" in lab.run(
        "home1", "cat", "/etc/wireguard/wg0.conf").stdout
    lab.run("home1", "sh", "-c", "pkill -x dnsmasq; while pgrep -x dnsmasq; do sleep 0.1; done")
    assert resolve(lab, "home1", "www.other.example") == ""  # no resolver at all, as booted
    done = reboot(lab, ["home1"])["home1"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert lab.run("home1", "pgrep", "-x", "dnsmasq", check=False).returncode == 0
    assert resolve(lab, "home1", "db.corp.example") == "198.51.100.140"
    assert resolve(lab, "home1", "www.other.example") == "192.0.2.99"


def test_second_run_changes_nothing_and_removal_restores_the_resolver(lab, tmp_path):
    again = lab.playbook()
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-2000:]
    (lab.inventory / "mesh.yml").write_text(lab.mesh_text.replace(SPLIT, "network:\n", 1))
    try:
        run = lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        assert lab.run("home1", "cat", "/etc/resolv.conf").stdout == BEFORE
        assert resolve(lab, "home1", "db.corp.example") == ""
        assert resolve(lab, "home1", "www.other.example") == "192.0.2.99"
        assert lab.run("home1", "pgrep", "-x", "dnsmasq", check=False).returncode == 1
    finally:
        (lab.inventory / "mesh.yml").write_text(lab.mesh_text)
