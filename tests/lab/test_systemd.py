"""Hosts that boot systemd (a Debian root file system under systemd-nspawn, in the lab's
network design): site.yml runs them through their own wg-quick@ units, and a real reboot
brings each back filtered before its tunnel carries a packet, with no Ansible run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO
from docmd import block
from meshlab import (
    GIT_URL,
    MeshLab,
    intended,
    lockfile,
    ping_losses,
    policy_with,
    publish,
    recap,
    running,
    serve_git,
)
from test_split_dns import dnsmasq

pytestmark = pytest.mark.lab

# A relay and exit node on Debian 13 (Ansible as root), and a host behind NAT on Debian 12
# (Ansible as wgadmin, who becomes root with sudo).
SYSTEMD_HOSTS = {"pub1": "trixie", "home1": "bookworm"}
USERS = {"pub1": "root", "home1": "wgadmin"}
RULESET = "/etc/wgmesh/nftables.nft"
# Split DNS through systemd-resolved: corp.example is answered by a nameserver on the office
# LAN, which group:eng (home1's owner) may reach; and an ssh rule that makes pub1's sshd
# take a drop-in (reloaded through systemd), pub1 running SSH policy.
DNS_RULE = '{"action": "accept", "src": ["group:eng"], "dst": ["legacy:53"]},'
SSH_RULE = '{"action": "accept", "src": ["group:eng"], "dst": ["tag:web"], "users": ["root"]}'
# Under the lab mesh's own network section.
SPLIT = "network:\n  split_dns:\n    corp.example: [198.51.100.130]\n"
# The mesh resolver on pub3 (the office router), which alice's group may ask (UDP 53); a
# laptop outside the mesh that boots systemd with systemd-resolved runs alice's phone1
# configuration with plain wg-quick (whose DNS line goes to resolvconf, here resolved's).
RESOLVER_RULE = ('{"action": "accept", "src": ["group:eng"], "proto": "udp", '
                 '"dst": ["tag:router:53"]},')
LAPTOP = ("  laptop: {interfaces: {internet: 192.0.2.90}, wireguard: false, init: systemd, "
          "release: bookworm, description: a device's machine outside the mesh}\n")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    topology = (REPO / "inventories/lab/topology.yml").read_text()
    for host, release in SYSTEMD_HOSTS.items():
        topology, n = re.subn(rf"^  {host}: \{{(.*)\}}$",
                              rf"  {host}: {{\1, init: systemd, release: {release}, "
                              rf"user: {USERS[host]}}}",
                              topology, flags=re.M)
        assert n == 1, host
    tmp = tmp_path_factory.mktemp("systemd")
    (tmp / "topology.yml").write_text(topology + LAPTOP)
    policy = (REPO / "policies/lab.hujson").read_text().replace(
        '"acls": [', f'"ssh": [{SSH_RULE}],\n  "acls": [\n    {DNS_RULE}\n    {RESOLVER_RULE}',
        1)
    (tmp / "policy.hujson").write_text(policy)
    mesh = (REPO / "inventories/lab/mesh.yml").read_text().replace(
        "../../policies/lab.hujson", str(tmp / "policy.hujson")).replace("network:\n", SPLIT, 1)
    mesh = mesh.replace("    tags: [tag:web]\n", "    tags: [tag:web]\n    ssh_policy: true\n", 1)
    mesh = mesh.replace("    tags: [tag:router]\n", "    tags: [tag:router]\n    resolver: true\n",
                        1)
    assert "ssh_policy: true" in mesh and "resolver: true" in mesh
    (tmp / "inv").mkdir()
    lab = MeshLab(tmp / "inv", "wgd", topology=tmp / "topology.yml", mesh=mesh)
    lab.lab.down()
    lab.lab.up()
    nameserver = lab.start("legacy", dnsmasq("198.51.100.130", "db.corp.example",
                                             "198.51.100.140"))
    try:
        lab.phone_key = tmp / "phone1.key"
        added = lab.wgmesh("device", "add", "phone1", "--owner", "alice@example.com",
                           "--key-out", str(lab.phone_key), "--no-qr")
        assert added.returncode == 0, added.stderr
        run = lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        lab.settle()
        yield lab
    finally:
        lab.stop(nameserver)
        lab.lab.down()


def journal(mesh, node: str, unit: str) -> str:
    return mesh.run(node, "journalctl", "-b", "-o", "cat", "--no-pager", "-u", unit).stdout


def test_site_runs_systemd_hosts_through_their_units(mesh):
    for node, release in SYSTEMD_HOSTS.items():
        assert mesh.run(node, "systemctl", "is-system-running").stdout.strip() == "running"
        assert f"VERSION_CODENAME={release}" in mesh.run(node, "cat", "/etc/os-release").stdout
    for node, unit in (("pub1", "wg-quick@wg0"), ("pub1", "wg-quick@wg0-hop"),
                       ("home1", "wg-quick@wg0"), ("home1", "wg-quick@wg0-hop")):
        state = mesh.run(node, "systemctl", "is-enabled", unit, check=False).stdout.strip()
        active = mesh.run(node, "systemctl", "is-active", unit, check=False).stdout.strip()
        assert (state, active) == ("enabled", "active"), (node, unit)
    again = mesh.playbook()
    assert again.returncode == 0, again.stdout[-3000:]
    assert not re.search(r"^(pub1|home1)\s+: .*changed=[1-9]", again.stdout, re.M), \
        again.stdout[-3000:]


def test_the_agent_runs_as_a_confined_service_and_punches_from_a_systemd_host(mesh):
    """pub1 (a lighthouse) and home1 (behind nat-home) run wgmesh-agent.service as the role
    installed it; with the namespace hosts' agents started too, home1 and branch1 go
    direct."""
    for node in SYSTEMD_HOSTS:
        unit = "wgmesh-agent.service"
        assert mesh.run(node, "systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        assert mesh.run(node, "systemctl", "is-active", unit).stdout.strip() == "active"
        shown = mesh.run(node, "systemctl", "show", unit, "-p", "CapabilityBoundingSet",
                         "-p", "NoNewPrivileges", "-p", "ProtectSystem").stdout.splitlines()
        props = dict(line.split("=", 1) for line in shown)
        assert set(props.pop("CapabilityBoundingSet").split()) == {"cap_net_admin",
                                                                  "cap_net_raw"}, shown
        assert props == {"NoNewPrivileges": "yes", "ProtectSystem": "strict"}, shown
    assert {"pub2", "branch1"} <= set(mesh.lab.start_agents())

    def direct():
        out = mesh.run("home1", "cat", "/var/lib/wgmesh/agent.json", check=False).stdout
        peers = json.loads(out or "{}").get("peers", {})
        return peers.get("branch1", {}).get("path") == "direct (punched)"
    deadline = time.monotonic() + 20
    while not direct() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert direct(), journal(mesh, "home1", "wgmesh-agent.service")
    assert "home1: direct at" in mesh.run("branch1", "cat", "/var/log/wgmesh-agent.log").stdout


def test_the_monitor_runs_as_a_confined_service_and_logs_denied_flows_to_the_journal(mesh):
    """The role installed wgmesh-monitor.service on the systemd hosts: it keeps
    CAP_NET_ADMIN only, writes the textfile on its own, and its journal names a flow the
    policy denies (docs/observability.md's host block, run on home1)."""
    for node in SYSTEMD_HOSTS:
        unit = "wgmesh-monitor.service"
        assert mesh.run(node, "systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        shown = mesh.run(node, "systemctl", "show", unit, "-p", "CapabilityBoundingSet",
                         "-p", "ProtectSystem").stdout.splitlines()
        assert dict(line.split("=", 1) for line in shown) == {
            "CapabilityBoundingSet": "cap_net_admin", "ProtectSystem": "strict"}, shown
    home1, pub3 = mesh.mesh_address("home1"), mesh.mesh_address("pub3")
    refused = mesh.python("home1", "import socket\n"
                          f"socket.create_connection(('{pub3}', 5432), timeout=1)", check=False)
    assert "TimeoutError" in refused.stderr, refused.stderr  # dropped, not refused
    line = f"denied out: home1 ({home1}) -> pub3 ({pub3}) tcp/5432"
    deadline = time.monotonic() + 20  # the service's own refresh: every 15 s
    while time.monotonic() < deadline and not (
            line in journal(mesh, "home1", "wgmesh-monitor.service")
            and "wgmesh_denied_flows_logged_total{direction=\"out\"} 0" not in mesh.run(
                "home1", "cat", "/var/lib/prometheus/node-exporter/wgmesh.prom").stdout):
        time.sleep(0.5)
    said = []
    for cmd in block("docs/observability.md: systemctl is-active wgmesh-monitor").commands:
        run = mesh.run("home1", "sh", "-c", cmd.text, check=False)
        assert run.returncode == cmd.exit, (cmd.text, run.stdout, run.stderr)
        said.append(run.stdout)
    active, textfile, logged = said
    assert active.strip() == "active"
    assert 'wgmesh_info{node="home1",interface="wg0"' in textfile
    assert "wgmesh_drift 0\n" in textfile and "wgmesh_interface_up 1\n" in textfile
    assert "wgmesh_denied_flows_logged_total{direction=\"out\"} 0" not in textfile
    assert line in logged


def resolved_link(mesh, node: str) -> tuple[str, str]:
    return tuple(mesh.run(node, "resolvectl", what, "wg0").stdout.split(":", 1)[1].strip()
                 for what in ("dns", "domain"))


def test_split_dns_goes_through_systemd_resolved_and_sshd_reloads_through_systemd(mesh):
    """home1 asks corp.example of the office nameserver over wg0 (resolved's per-link DNS),
    everything else as before; pub1's sshd took its drop-in by its unit's reload."""
    assert resolved_link(mesh, "home1") == ("198.51.100.130", "~corp.example")
    out = mesh.run("home1", "getent", "ahostsv4", "db.corp.example", check=False, timeout=20)
    assert out.stdout.split()[:1] == ["198.51.100.140"], out.stdout + out.stderr
    assert mesh.run("home1", "test", "-e", "/etc/wgmesh/dnsmasq.conf",
                    check=False).returncode == 1  # no dnsmasq of wgmesh's own here
    assert mesh.run("pub1", "test", "-s", "/etc/ssh/sshd_config.d/wgmesh.conf",
                    check=False).returncode == 0
    ssh = journal(mesh, "pub1", "ssh.service")
    assert "Reloaded" in ssh or "Reloading" in ssh, ssh[-2000:]


def test_a_device_with_plain_wg_quick_resolves_names_through_the_mesh_resolver(mesh):
    """phone1's exported configuration names pub3's resolver as DNS; on the laptop (systemd
    with resolved, outside the mesh) plain `wg-quick up` hands it to resolvconf, and the
    laptop then resolves a node's name, a bare name (the mesh domain is its search domain)
    and the split domain, whose nameserver only pub3 reaches. The resolver listens on the
    mesh addresses only."""
    conf = mesh.wgmesh("device", "config", "phone1", "--key-file", str(mesh.phone_key),
                       "--no-qr")
    assert conf.returncode == 0, conf.stderr
    plan = mesh.plan()["hosts"]
    pub3 = plan["pub3"]["addresses"]
    assert f"DNS = {pub3[0]}, {pub3[1]}, mesh.internal\n" in conf.stdout, conf.stdout
    mesh.run("laptop", "sh", "-c", "umask 077 && cat > /etc/wireguard/phone.conf",
             stdin=conf.stdout)
    up = mesh.run("laptop", "wg-quick", "up", "phone", check=False, timeout=30)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        link = mesh.run("laptop", "resolvectl", "dns", "phone").stdout
        assert pub3[0] in link, link
        for name, want in (("pub2.mesh.internal", plan["pub2"]["addresses"][0]),
                           ("home1", plan["home1"]["addresses"][0]),
                           ("db.corp.example", "198.51.100.140")):
            got = mesh.run("laptop", "getent", "ahostsv4", name, check=False, timeout=20)
            assert got.stdout.split()[:1] == [want], (name, got.stdout, got.stderr)
        missing = mesh.run("laptop", "getent", "ahostsv4", "nosuch.mesh.internal",
                           check=False, timeout=20)
        assert missing.returncode == 2, missing.stdout
        sockets = mesh.run("pub3", "ss", "-Hlunp", "sport", "=", ":53").stdout
        bound = sorted(line.split()[3] for line in sockets.splitlines() if "dnsmasq" in line)
        assert bound == sorted([f"{pub3[0]}:53", f"[{pub3[1]}]:53"]), sockets
    finally:
        mesh.run("laptop", "wg-quick", "down", "phone", check=False, timeout=30)


def test_rotation_and_status_on_systemd_hosts(mesh):
    """home1 (reached as wgadmin, with sudo) gets a new key, live; pub1 takes it; status.yml
    then finds every host on its bundle and every ping as the policy says; a reboot keeps the
    new key. (Before the tests that reboot pub1: peers behind NAT reach a rebooted public
    host again only once they renew their session, docs/reliability.md.)"""
    old = mesh.run("home1", "wg", "show", "wg0", "public-key").stdout.strip()
    run = mesh.playbook("-l", "home1", play="playbooks/rotate.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    new = mesh.run("home1", "wg", "show", "wg0", "public-key").stdout.strip()
    assert new != old
    assert new in mesh.run("pub1", "wg", "show", "wg0", "peers").stdout.split()
    status = mesh.playbook(play="playbooks/status.yml")
    assert status.returncode == 0, status.stdout[status.stdout.find("TASK [Report]"):][:6000]
    mesh.lab.reboot("home1")
    assert mesh.run("home1", "wg", "show", "wg0", "public-key").stdout.strip() == new
    again = mesh.playbook()
    assert again.returncode == 0 and all(r["changed"] == 0 for r in recap(again.stdout).values()), \
        again.stdout[-3000:]


def test_ansible_reaches_a_host_as_a_user_with_sudo_and_fails_early_without_root(mesh):
    """home1 is run by wgadmin, who becomes root through sudo (the fixture's site.yml and
    the second run above); as guest, with no way to root, the run stops at the first
    module with what to do, and nothing on home1 changes."""
    who = mesh.ansible("home1", "-m", "ansible.builtin.command", "-a", "id -un",
                       "-e", "ansible_become=false")
    assert "wgadmin" in who.stdout, who.stdout
    before = mesh.run("home1", "cat", "/var/lib/wgmesh/state.json").stdout
    run = mesh.playbook("-l", "home1,localhost", "-e", "ansible_user=guest",
                        "-e", "ansible_become=false")
    assert run.returncode != 0
    assert "wgmesh needs root on this host" in run.stdout, run.stdout[-3000:]
    assert "ansible_become: true" in run.stdout
    assert mesh.run("home1", "cat", "/var/lib/wgmesh/state.json").stdout == before


def test_a_rebooted_host_filters_before_its_tunnel_carries_a_packet(mesh, capsys):
    """pub2 floods pub1's mesh address with pings the policy denies, with its own filter
    out of the way, during the whole of a real reboot of pub1: none is answered, and pub1's
    filter counts them as they reach wg0."""
    pub1, pub2 = mesh.mesh_address("pub1"), mesh.mesh_address("pub2")
    mesh.run("pub2", "nft", "delete", "table", "inet", "wgmesh")
    listener = None
    try:
        flood = mesh.record("pub2", ["ping", "-D", "-i", "0.01", pub1])
        time.sleep(1)
        seconds = mesh.lab.reboot("pub1")
        # pub1 opens its session to pub2 with traffic the policy allows (tag:web to
        # tag:db:5432); pub2's pings then reach pub1's wg0.
        [listener] = mesh.start_listeners({"pub2": pub2})
        assert mesh.probe("pub1", [("db", pub2, "tcp", 5432)]) == {"db": True}
        deadline = time.monotonic() + 20
        while mesh.counter("pub1", "dropped_in") < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        dropped = mesh.counter("pub1", "dropped_in")
        time.sleep(1)
        os.killpg(flood.pid, signal.SIGINT)  # ping prints its summary
        output = mesh.recorded(flood, timeout=10)
    finally:
        if listener:
            mesh.stop(listener)
        mesh.run("pub2", "nft", "-f", RULESET)
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                        output).groups())
    replies, _ = ping_losses(output)
    with capsys.disabled():
        print(f"\npub1 rebooted in {seconds:.2f} s; pub2 sent {sent} pings the policy "
              f"denies meanwhile: {received} answered, {dropped} dropped by pub1's filter")
        if seconds > 10:  # seen now and then (90 s): what the shutdown and boot waited for
            print(mesh.run("pub1", "sh", "-c", "journalctl -b -1 -o short-monotonic "
                           "--no-pager | tail -40; journalctl -b 0 -o short-monotonic "
                           "--no-pager | head -30", check=False).stdout)
    assert received == replies == 0, output[-2000:]
    assert dropped >= 100
    for unit in ("wg-quick@wg0", "wg-quick@wg0-hop"):
        text = journal(mesh, "pub1", unit)
        iface = unit.split("@")[1]
        load, create = text.find(f"[#] nft -f {RULESET}"), text.find(f"[#] ip link add {iface}")
        assert 0 <= load < create, text[:2000]
    status = mesh.wgmesh("status", "-l", "pub1")
    assert status.returncode == 0 and "- in sync" in status.stdout, status.stdout[-3000:]


def test_a_host_rebooted_during_a_run_converges_on_the_next(mesh, tmp_path):
    """pub1 reboots while a run applies a policy change that reaches it: whatever the run
    says of pub1, pub1 boots filtered and whole, and the next run brings it to the change."""
    new = policy_with(mesh, tmp_path, '"dst": ["tag:web:80,443"]',
                      '"dst": ["tag:web:80,443,8080"]')
    want = intended(mesh, new)
    assert want["pub1"] != running(mesh, "pub1")
    done = {}
    run = threading.Thread(target=lambda: done.__setitem__(
        "run", mesh.playbook("-e", f"wgmesh_policy_file={new}")))
    run.start()
    time.sleep(2)  # hosts are applying
    mesh.lab.reboot("pub1")
    run.join()
    assert "table inet wgmesh" in mesh.run("pub1", "nft", "list", "tables").stdout
    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert running(mesh, "pub1") == want["pub1"]
    check = mesh.playbook("--check", "-e", f"wgmesh_policy_file={new}")
    assert check.returncode == 0 and recap(check.stdout)["pub1"]["changed"] == 0
    assert mesh.playbook().returncode == 0  # the lab's policy again


def test_a_host_rebooted_while_a_peer_rotates_converges_on_the_next(mesh):
    """pub2's key is replaced (playbooks/rotate.yml -l pub2) while pub1, its peer, reboots:
    whatever the rotation run could do on pub1, pub1 boots filtered, and the next site.yml
    run gives it pub2's new key (pinned by the rotation) and pub1 reaches pub2 again."""
    old = mesh.run("pub2", "wg", "show", "wg0", "public-key").stdout.strip()
    done = {}
    rotation = threading.Thread(target=lambda: done.__setitem__(
        "run", mesh.playbook("-l", "pub2", play="playbooks/rotate.yml")))
    rotation.start()
    time.sleep(1.5)  # the new key is made; the peers are being given it
    mesh.lab.reboot("pub1")
    rotation.join()
    assert "table inet wgmesh" in mesh.run("pub1", "nft", "list", "tables").stdout
    again = mesh.playbook()
    assert again.returncode == 0, again.stdout[-3000:]
    new = mesh.run("pub2", "wg", "show", "wg0", "public-key").stdout.strip()
    assert new != old
    assert new in mesh.run("pub1", "wg", "show", "wg0", "peers").stdout.split()
    pub2 = mesh.mesh_address("pub2")
    [listener] = mesh.start_listeners({"pub2": pub2})
    try:
        assert mesh.probe("pub1", [("db", pub2, "tcp", 5432)]) == {"db": True}
    finally:
        mesh.stop(listener)
    check = mesh.playbook("--check")
    assert check.returncode == 0 and all(r["changed"] == 0 for r in recap(check.stdout).values())


def test_a_host_behind_nat_reopens_its_tunnels_as_it_boots(mesh, capsys):
    """home1 sends nothing after its reboot: its units' hooks open every tunnel that keeps
    itself up (to the relay, to the public hosts), so its peers can reach it at once."""
    started = time.monotonic()
    booted = mesh.lab.reboot("home1")
    # Its WireGuard is new since the boot: a handshake it has is one made since.
    deadline = time.monotonic() + 10
    while (waiting := mesh.unsettled("home1")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not waiting
    with capsys.disabled():
        print(f"\nhome1 (behind NAT) rebooted in {booted:.2f} s; every tunnel it keeps up "
              f"had its handshake {time.monotonic() - started:.2f} s after the reboot began")
    assert len(mesh.run("home1", "wg", "show", "all", "dump").stdout.splitlines()) > 2
    # resolved forgot wg0's DNS with the link; the interface's hook gave it back.
    assert resolved_link(mesh, "home1") == ("198.51.100.130", "~corp.example")
    out = mesh.run("home1", "getent", "ahostsv4", "db.corp.example", check=False, timeout=20)
    assert out.stdout.split()[:1] == ["198.51.100.140"], out.stdout + out.stderr


def test_a_host_whose_table_cannot_load_boots_with_its_tunnels_down(mesh):
    """The table file gone, and the record of the last good bundle too (a damaged disk:
    with the record, a boot puts the file back, as the test below shows): both units fail,
    saying why, and no WireGuard link exists."""
    last_good = "/var/lib/wgmesh/last-good-files.json"
    mesh.run("pub1", "mv", RULESET, "/root/nftables.nft.good")
    mesh.run("pub1", "mv", last_good, "/root/last-good-files.json")
    try:
        mesh.lab.reboot("pub1")
        for unit in ("wg-quick@wg0", "wg-quick@wg0-hop"):
            iface = unit.split("@")[1]
            assert mesh.run("pub1", "systemctl", "is-failed", unit,
                            check=False).stdout.strip() == "failed", unit
            assert f"wgmesh: {iface} stays down: its filter {RULESET} did not load" in \
                journal(mesh, "pub1", unit)
            assert mesh.run("pub1", "ip", "link", "show", "dev", iface,
                            check=False).returncode != 0
        assert mesh.run("pub1", "nft", "list", "tables").stdout == ""
        assert mesh.run("pub1", "systemctl", "is-system-running",
                        check=False).stdout.strip() == "degraded"
    finally:
        mesh.run("pub1", "mv", "/root/nftables.nft.good", RULESET)
        mesh.run("pub1", "mv", "/root/last-good-files.json", last_good)
    mesh.lab.reboot("pub1")
    status = mesh.wgmesh("status", "-l", "pub1")
    assert status.returncode == 0 and "- in sync" in status.stdout, status.stdout[-3000:]


def test_a_host_rebooted_half_way_through_an_apply_comes_back_on_its_last_good_bundle(
        mesh, tmp_path):
    """What a reboot can catch half written: pub1's table of the next bundle (a policy
    change) already on disk, its record still the last good bundle's. It boots on the last
    good bundle: wg-quick@'s wgmesh drop-in puts the files back before the interfaces read
    them, and wgmesh status finds pub1 in sync with no run."""
    from wgmesh.build import build

    good = json.loads(mesh.run("pub1", "cat", "/var/lib/wgmesh/bundle.json").stdout)
    new = policy_with(mesh, tmp_path, '"dst": ["tag:web:80,443"]',
                      '"dst": ["tag:web:80,443,8080"]')
    b = build(mesh.inventory, new, run_tests=False)
    following = b.bundle("pub1")
    assert following["nftables"] != good["nftables"]
    mesh.run("pub1", "sh", "-c", f"cat > {RULESET}", stdin=following["nftables"])
    mesh.lab.reboot("pub1")
    assert mesh.run("pub1", "cat", RULESET).stdout == good["nftables"]
    assert mesh.run("pub1", "cat", "/etc/wireguard/wg0.conf").stdout == good["wg_conf"]
    said = journal(mesh, "pub1", "wg-quick@wg0") + journal(mesh, "pub1", "wg-quick@wg0-hop")
    assert f"wgmesh: {RULESET} is not the last good bundle's ({good['hash']}): put back" in said
    status = mesh.wgmesh("status", "-l", "pub1")
    assert status.returncode == 0 and "- in sync" in status.stdout, status.stdout[-3000:]

# Pull mode on home1: the repository is served by `git daemon` on the lab host web.


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@example.com", *args], capture_output=True, text=True,
                          check=True).stdout


def test_pull_mode_timer_applies_a_new_commit_on_its_own(mesh, tmp_path, capsys):
    """home1 (Debian 12) installs wgmesh from the offline kit, enrols in pull mode with a
    timer every 10 s, and applies a commit that reaches it with no run from anyone: the
    timer fires, the pull service runs the installed project's play on the commit's data."""
    kit = tmp_path / "kit"
    built = subprocess.run([str(BIN / "wgmesh"), "kit", "--out", str(kit)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    tar = subprocess.run(["tar", "-C", str(kit), "-c", "."], capture_output=True,
                         check=True).stdout
    subprocess.run(mesh.lab.exec_argv("home1", ["sh", "-c", "mkdir -p /root/kit && tar -x -C "
                                                "/root/kit"]), input=tar, check=True)
    # docs/air-gap.md's host block, as shown, in the kit's folder on home1 (no network there:
    # the Debian packages come from the kit).
    for cmd in block("docs/air-gap.md: sha256sum -c SHA256SUMS").commands:
        done = mesh.run("home1", "sh", "-c", f"cd /root/kit && {cmd.text}", check=False,
                        timeout=900)
        assert done.returncode == cmd.exit, f"{cmd}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"

    repo = tmp_path / "repo"
    (repo / "policies").mkdir(parents=True)
    (repo / "inventories/site").mkdir(parents=True)
    source = yaml.safe_load((mesh.inventory / "mesh.yml").read_text())
    policy = repo / "policies/site.hujson"
    shutil.copy(source["policy"], policy)
    text = (mesh.inventory / "mesh.yml").read_text()
    text = re.sub(r"^lockfile: .*\n", "", text, flags=re.M)
    text = text.replace(f"policy: {source['policy']}", "policy: ../../policies/site.hujson")
    (repo / "inventories/site/mesh.yml").write_text(text)
    shutil.copy(lockfile(mesh), repo / "inventories/site/mesh.lock.yml")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "the mesh")
    serve_git(mesh)
    publish(mesh, repo)

    enrol = mesh.run("home1", "/opt/wgmesh/.venv/bin/wgmesh", "host", "enrol", "--pull",
                     GIT_URL, "--node", "home1", "--inventory", "inventories/site",
                     "--every", "10", timeout=60)
    assert "wgmesh-pull.timer started" in enrol.stdout + enrol.stderr, enrol.stderr
    pinned = yaml.safe_load((repo / "inventories/site/mesh.lock.yml").read_text())
    assert enrol.stdout.split()[-1] == pinned["nodes"]["home1"]["public_key"]

    # A change that reaches home1 (alice, group:eng): one more port on the web tier.
    policy.write_text(policy.read_text().replace('"dst": ["tag:web:80,443"]',
                                                 '"dst": ["tag:web:80,443,8443"]', 1))
    git(repo, "commit", "-qam", "eng gets the web tier's 8443")
    commit = git(repo, "rev-parse", "HEAD").strip()
    published = time.monotonic()
    publish(mesh, repo)
    # The timer's first run comes 60 s after boot (OnBootSec), then one every 10 s; a run
    # on the host is a full Ansible run of its own (some 30 s here).
    deadline = published + 240
    while time.monotonic() < deadline:
        bundle = mesh.run("home1", "cat", "/var/lib/wgmesh/bundle.json", check=False).stdout
        if bundle and json.loads(bundle).get("commit") == commit[:12]:
            break
        time.sleep(1)
    took = time.monotonic() - published
    runs = journal(mesh, "home1", "wgmesh-pull.service")
    assert json.loads(bundle).get("commit") == commit[:12], runs[-3000:]
    assert "8443" in mesh.run("home1", "cat", RULESET).stdout
    assert mesh.run("home1", "systemctl", "is-enabled", "wgmesh-pull.timer").stdout.strip() == \
        "enabled"
    with capsys.disabled():
        print(f"\nhome1's pull timer applied a new commit {took:.1f} s after it was published")
