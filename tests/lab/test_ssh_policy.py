"""The policy's ssh rules on the lab, on pub2 (tag:db), which opts in to SSH policy: carol
(group:ops) may log in to it over the mesh as any user but root; tag:web (pub1) has a
network rule for pub2's port 22 but no ssh rule, so the filter refuses it and so would sshd.
A change of the rules reaches the running sshd (a reload), and the management path (Ansible
as root over the underlay) never changes; when pub2 opts out, the network rules alone
decide its port 22.

pub2 runs a second sshd on its mesh address, configured like Debian's (drop-ins included);
the lab's own sshd stays on the underlay address for Ansible."""

from __future__ import annotations

import pytest
from conftest import REPO
from meshlab import MeshLab

pytestmark = pytest.mark.lab

MESH_CONF = "/etc/ssh/sshd_mesh_config"
RULE = ('{"action": "accept", "src": ["group:ops"], "dst": ["tag:db"], '
        '"users": ["autogroup:nonroot"]}')
NETWORK = '{"action": "accept", "src": ["tag:web"], "proto": "tcp", "dst": ["tag:db:22"]},'


# As at Tailscale, `tests` judge the network rules (which now let tag:web reach port 22) and
# sshTests the logins (which no ssh rule gives tag:web).
TESTS = ('{"src": "tag:web", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]}',
         '{"src": "tag:web", "accept": ["tag:db:5432", "tag:db:22"]}')
SSH_TESTS = '"sshTests": [{"src": "tag:web", "dst": ["tag:db"], "deny": ["root", "tester"]}],'


def policy(users: str = '["autogroup:nonroot"]') -> str:
    text = (REPO / "policies/lab.hujson").read_text()
    text = text.replace('"acls": [', '"acls": [\n    ' + NETWORK, 1)
    assert TESTS[0] in text
    text = text.replace(*TESTS)
    rule = RULE.replace('["autogroup:nonroot"]', users)
    return text.replace('"tests": [', f'"ssh": [{rule}],\n  {SSH_TESTS}\n  "tests": [', 1)


def sshd_config(address: str) -> str:
    return "\n".join(["Include /etc/ssh/sshd_config.d/*.conf", f"ListenAddress {address}",
                      "HostKey /etc/ssh/ssh_host_ed25519_key", "PidFile /run/sshd-mesh.pid",
                      "UsePAM no", "PermitRootLogin prohibit-password",
                      "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                      "StrictModes no", "AuthorizedKeysFile .ssh/authorized_keys",
                      "UseDNS no", ""])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sshpolicy")
    (tmp / "inv").mkdir()
    (tmp / "ssh.hujson").write_text(policy())
    # pub2 opts in to SSH policy (as with `tailscale set --ssh`); no other node does.
    mesh = (REPO / "inventories/lab/mesh.yml").read_text().replace(
        "../../policies/lab.hujson", str(tmp / "ssh.hujson")).replace(
        "    tags: [tag:db]\n", "    tags: [tag:db]\n    ssh_policy: true\n", 1)
    assert "ssh_policy: true" in mesh
    lab = MeshLab(tmp / "inv", "wgs", mesh=mesh)
    lab.policy_file = tmp / "ssh.hujson"
    lab.lab.down()
    lab.lab.up()
    assert lab.wgmesh("lock").returncode == 0
    lab.pub2 = lab.plan()["hosts"]["pub2"]["addresses"][0]
    lab.run("pub2", "sh", "-c", f"cat > {MESH_CONF}", stdin=sshd_config(lab.pub2))
    # An account to log in as (its home in the host's private /tmp), with the lab's key.
    lab.run("pub2", "sh", "-c", "useradd -M -d /tmp/tester -p '*' -s /bin/sh tester && "
            "mkdir -p /tmp/tester/.ssh && cp /root/.ssh/authorized_keys /tmp/tester/.ssh/ && "
            "chown -R tester: /tmp/tester")
    key = lab.lab.key_file.read_text()
    for client in ("cafe1", "pub1"):
        lab.run(client, "sh", "-c", "mkdir -p /root/.ssh && cat > /root/.ssh/id_ed25519 && "
                "chmod 600 /root/.ssh/id_ed25519", stdin=key)
    run = apply(lab)
    assert "sshd is not running" in run.stdout  # the mesh sshd starts after wg0 is up
    lab.run("pub2", "/usr/sbin/sshd", "-f", MESH_CONF)
    lab.settle()
    for client in ("cafe1", "pub1"):  # first handshakes (cafe1 is behind a NAT)
        lab.run(client, "ping", "-c", "1", "-w", "10", lab.pub2, check=False, timeout=15)
    yield lab
    lab.lab.down()


def apply(lab):
    run = lab.playbook("-e", f"wgmesh_sshd_config={MESH_CONF}",
                       "-e", "wgmesh_sshd_pidfile=/run/sshd-mesh.pid", "-v")
    assert run.returncode == 0, run.stdout[-3000:]
    return run


def ssh(lab, client: str, user: str) -> tuple[int, str]:
    out = lab.run(client, "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                  "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                  "-o", "ConnectTimeout=5",
                  f"{user}@{lab.pub2}", "id", "-un", check=False, timeout=30)
    return out.returncode, out.stdout.strip() + out.stderr


def test_the_drop_in_is_what_the_rules_say(lab):
    text = lab.run("pub2", "cat", "/etc/ssh/sshd_config.d/wgmesh.conf").stdout
    cafe1 = lab.plan()["hosts"]["cafe1"]["addresses"][0]
    assert f"Match LocalAddress {lab.pub2}," in text
    assert f"*@{cafe1}" in text and f"root@{cafe1}" in text.split("DenyUsers")[1]
    # Only pub2 is named by an ssh rule: no other host gets a drop-in.
    for other in ("pub1", "pub3", "home1"):
        assert lab.run(other, "test", "-e", "/etc/ssh/sshd_config.d/wgmesh.conf",
                       check=False).returncode == 1


def test_allowed_user_gets_in_as_an_allowed_account_not_as_root(lab):
    assert ssh(lab, "cafe1", "tester") == (0, "tester")
    rc, out = ssh(lab, "cafe1", "root")
    assert rc == 255 and "Permission denied" in out


def test_a_source_with_no_ssh_rule_is_refused_by_the_filter_and_by_sshd(lab):
    """Each layer alone refuses pub1: its own filter, then pub2's, then sshd."""
    sent = lab.counter("pub1", "dropped_out")
    rc, out = ssh(lab, "pub1", "tester")
    assert rc == 255 and "timed out" in out  # although a network rule allows tcp/22
    assert lab.counter("pub1", "dropped_out") > sent
    try:
        lab.run("pub1", "nft", "delete", "table", "inet", "wgmesh")
        received = lab.counter("pub2", "dropped_in")
        rc, out = ssh(lab, "pub1", "tester")
        assert rc == 255 and "timed out" in out
        assert lab.counter("pub2", "dropped_in") > received
        lab.run("pub2", "nft", "delete", "table", "inet", "wgmesh")
        rc, out = ssh(lab, "pub1", "tester")
        assert rc == 255 and "Permission denied" in out
    finally:
        for host in ("pub1", "pub2"):
            lab.run(host, "nft", "-f", "/etc/wgmesh/nftables.nft")


def test_a_rule_change_reaches_the_running_sshd(lab):
    lab.policy_file.write_text(policy('["root", "tester"]'))
    try:
        run = apply(lab)
        assert "reload sshd" in run.stdout
        assert ssh(lab, "cafe1", "root") == (0, "root")
        # A second run changes nothing (and does not reload sshd again).
        again = apply(lab)
        assert "reload sshd" not in again.stdout and "changed=0" in again.stdout
    finally:
        lab.policy_file.write_text(policy())
        apply(lab)
    rc, out = ssh(lab, "cafe1", "root")
    assert rc == 255 and "Permission denied" in out


def test_a_node_that_stops_running_ssh_policy_follows_the_network_rules(lab):
    """pub2 opts out: its drop-in goes, sshd reloads, and pub1's network rule for port 22
    lets it in over the mesh (sshd's own keys decide the login); opting in again closes it."""
    mesh_file = lab.inventory / "mesh.yml"
    opted_in = mesh_file.read_text()
    mesh_file.write_text(opted_in.replace("    ssh_policy: true\n", "", 1))
    try:
        run = apply(lab)
        assert "reload sshd" in run.stdout
        assert lab.run("pub2", "test", "-e", "/etc/ssh/sshd_config.d/wgmesh.conf",
                       check=False).returncode == 1
        assert ssh(lab, "pub1", "tester") == (0, "tester")
    finally:
        mesh_file.write_text(opted_in)
        apply(lab)
    rc, out = ssh(lab, "pub1", "tester")
    assert rc == 255 and "timed out" in out
