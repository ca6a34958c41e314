"""Beyond a flat mesh, on the lab: LAN-direct pairs, subnet routers, mesh names."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time

import pytest
from conftest import BIN, PY, REPO
from meshlab import built_mesh, recap

pytestmark = pytest.mark.lab
RULESET = "/etc/wgmesh/nftables.nft"  # the table file every interface loads first

HOLD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
time.sleep(5)
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "ext", "wge")


def tcp(mesh, src: str, host: str, port: int) -> bool:
    out = mesh.python(src, f"""
import socket
try:
    socket.create_connection(("{host}", {port}), timeout=2).close(); print("yes")
except OSError:
    print("no")
""")
    return out.stdout.strip() == "yes"


def wan_packets(mesh, router: str) -> int:
    out = mesh.run(router, "ip", "-s", "-j", "link", "show", "wan").stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["tx"]["packets"] + stats["rx"]["packets"]


def test_lan_pair_talks_directly_and_never_crosses_the_nat(mesh):
    plan = mesh.plan()
    home1 = {p["name"]: p for p in plan["hosts"]["home1"]["peers"]}
    assert home1["home2"]["connection"] == "lan"
    assert home1["home2"]["endpoint"] == "198.51.100.11:51830"
    home2 = plan["hosts"]["home2"]["addresses"][0]
    before = wan_packets(mesh, "nat-home")
    ping = mesh.run("home1", "ping", "-q", "-c", "100", "-i", "0.01", home2)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    # Keepalives to public peers may cross the NAT meanwhile; 100 pings may not.
    assert wan_packets(mesh, "nat-home") - before < 10
    endpoints = mesh.run("home1", "wg", "show", "wg0", "endpoints").stdout
    assert "198.51.100.11:51830" in endpoints


def test_subnet_router_carries_only_what_policy_allows(mesh):
    legacy = "198.51.100.130"
    listener = mesh.start("legacy", [PY, "-c", (
        "import socket; s=socket.socket(); s.bind(('0.0.0.0', 80)); s.listen(); "
        "print('ready', flush=True); s.accept()")])
    try:
        assert listener.stdout.readline().strip() == "ready"
        assert tcp(mesh, "home1", legacy, 22), (   # alice: legacy:22 allowed
            mesh.run("home1", "wg", "show", "wg0").stdout)
        assert not tcp(mesh, "home1", legacy, 80)    # ... and nothing else there
        assert not tcp(mesh, "home2", legacy, 22)    # bob: nothing in that LAN
        assert not tcp(mesh, "cafe1", legacy, 22)
    finally:
        mesh.stop(listener)
    # The legacy host sees the router's LAN address (source NAT into the LAN).
    hold = mesh.start("home1", [PY, "-c", HOLD, legacy, "22"])
    try:
        assert hold.stdout.readline().strip() == "connected"
        seen = mesh.run("legacy", "ss", "-Htn", "state", "established", "( sport = :22 )")
        assert "198.51.100.129:" in seen.stdout, seen.stdout
    finally:
        mesh.stop(hold)


def test_unapproved_route_is_installed_nowhere(mesh):
    plan = mesh.plan()
    for node, host in plan["hosts"].items():
        for peer in host["peers"]:
            assert "198.51.100.192/26" not in peer["allowed_ips"], node
        routes = mesh.run(node, "ip", "route", "show", "dev", "wg0").stdout
        assert "198.51.100.192" not in routes, node
        assert "198.51.100.192" not in mesh.run(node, "wg", "show", "wg0",
                                                 "allowed-ips").stdout
    assert "198.51.100.128/26" in mesh.run("home1", "ip", "route", "show", "dev", "wg0").stdout


def test_names_resolve_for_visible_peers_only(mesh):
    assert mesh.run("home1", "getent", "hosts", "pub1").returncode == 0
    assert mesh.run("home1", "getent", "hosts", "pub1.mesh.internal").returncode == 0
    assert mesh.run("home1", "getent", "hosts", "pub2", check=False).returncode != 0
    assert mesh.run("cafe1", "getent", "hosts", "home2", check=False).returncode != 0
    ping = mesh.run("home1", "ping", "-c1", "-W2", "pub1.mesh.internal", check=False)
    assert ping.returncode == 0, ping.stdout


SOURCE_OF = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8088)); s.listen()
print("ready", flush=True)
s.settimeout(20)
while True:
    c, addr = s.accept(); print(addr[0], flush=True); c.close()
"""


def sources_seen_by_web(mesh, clients: list[str]) -> list[str]:
    web = str(mesh.topo.hosts["web"].address)
    listener = mesh.start("web", [PY, "-u", "-c", SOURCE_OF])
    try:
        assert listener.stdout.readline().strip() == "ready"
        seen = []
        for client in clients:
            assert tcp(mesh, client, web, 8088), client
            seen.append(listener.stdout.readline().strip())
        return seen
    finally:
        mesh.stop(listener)


def test_exit_node_carries_only_its_users_to_the_internet(mesh):
    pub1 = str(mesh.topo.hosts["pub1"].address)
    nat = str(mesh.topo.routers["nat-home"].wan_address)
    # home2 (bob) uses pub1 as exit node; home1 (alice), on the same LAN, does not.
    assert sources_seen_by_web(mesh, ["home2", "home1"]) == [pub1, nat]
    # Mesh and LAN stay reachable from the host using the exit node.
    assert mesh.run("home2", "ping", "-c1", "-W2", "198.51.100.10", check=False).returncode == 0
    assert mesh.run("home2", "ping", "-c1", "-W2", "pub1.mesh.internal",
                    check=False).returncode == 0
    # pub1 forwards to the internet for bob's node only.
    plan = mesh.plan()
    home2 = plan["hosts"]["home2"]["addresses"][0]
    fwd = plan["hosts"]["pub1"]["filters"]["fwd4"]
    assert fwd and all(e.startswith(f"{home2} . ") for e in fwd)


def test_a_node_without_autogroup_internet_cannot_use_the_exit(mesh, tmp_path):
    text = (mesh.inventory / "mesh.yml").read_text().replace(
        "    owner: carol@example.com\n",
        "    owner: carol@example.com\n    use_exit_node: pub1\n")
    (tmp_path / "mesh.yml").write_text(text)
    (tmp_path / "mesh.lock.yml").write_text((mesh.lab.dir / "mesh.lock.yml").read_text())
    text = text.replace(f"lockfile: {mesh.lab.dir}/mesh.lock.yml", "")
    (tmp_path / "mesh.yml").write_text(text)
    out = subprocess.run([str(BIN / "wgmesh"), "render", "--json", "--all", "-i",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ('cafe1: policy does not grant it autogroup:internet, so it does not use exit '
            'node "pub1"') in out.stderr
    cafe1 = json.loads(out.stdout)["hosts"]["cafe1"]
    assert all("0.0.0.0/0" not in p["allowed_ips"] for p in cafe1["peers"])


def test_switching_the_exit_node_off_and_on_is_live(mesh):
    mesh_file = mesh.inventory / "mesh.yml"
    original = mesh_file.read_text()
    pub1 = str(mesh.topo.hosts["pub1"].address)
    nat = str(mesh.topo.routers["nat-home"].wan_address)
    try:
        mesh_file.write_text(original.replace("    use_exit_node: pub1", ""))
        assert mesh.playbook().returncode == 0
        assert "fwmark" not in mesh.run("home2", "ip", "rule").stdout
        assert "wg-quick-wg0" not in mesh.run("home2", "nft", "list", "tables").stdout
        assert sources_seen_by_web(mesh, ["home2"]) == [nat]
    finally:
        mesh_file.write_text(original)
        assert mesh.playbook().returncode == 0
    assert sources_seen_by_web(mesh, ["home2"]) == [pub1]
    # Switched on live, home2 has what `wg-quick up` would have made: the same table.
    live = mesh.run("home2", "nft", "list", "ruleset").stdout
    assert "table ip wg-quick-wg0" in live and "table ip6 wg-quick-wg0" in live
    mesh.run("home2", "wg-quick", "down", "wg0")
    mesh.run("home2", "wg-quick", "up", "wg0")
    fresh = mesh.run("home2", "nft", "list", "ruleset").stdout
    wgq = re.compile(r"^table ip6? wg-quick-wg0 \{.*?^\}", re.M | re.S)
    # The interface's link-local address is new at each `up` (and may be missing yet).
    link_local = re.compile(r"^.*daddr fe80:.*\n", re.M)
    assert (sorted(link_local.sub("", t) for t in wgq.findall(live))
            == sorted(link_local.sub("", t) for t in wgq.findall(fresh)))
    assert recap(mesh.playbook().stdout)["home2"]["changed"] == 0


def test_management_networks_stay_off_the_exit_node(mesh, tmp_path):
    """A host using an exit node still reaches management_networks through its own gateway,
    live and at the next wg-quick up; a run whose SSH client the exit node would take over
    is refused before the host is touched."""
    mesh_file = mesh.inventory / "mesh.yml"
    original = mesh_file.read_text()
    web = str(mesh.topo.hosts["web"].address)
    pub1 = str(mesh.topo.hosts["pub1"].address)
    nat = str(mesh.topo.routers["nat-home"].wan_address)
    rule = f"to {web} lookup main"
    try:
        mesh_file.write_text(original.replace(
            "network:\n", f"network:\n  management_networks: [{web}/32]\n", 1))
        run = mesh.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        assert rule in mesh.run("home2", "ip", "rule", "show", "priority", "1000").stdout
        assert rule not in mesh.run("home1", "ip", "rule", "show").stdout  # no exit node
        assert sources_seen_by_web(mesh, ["home2"]) == [nat]
        assert recap(mesh.playbook().stdout)["home2"]["changed"] == 0
        # The same rule comes back with the interface (wg-quick's PostUp), and leaves with it.
        mesh.run("home2", "wg-quick", "down", "wg0")
        assert rule not in mesh.run("home2", "ip", "rule", "show").stdout
        mesh.run("home2", "wg-quick", "up", "wg0")
        assert rule in mesh.run("home2", "ip", "rule", "show", "priority", "1000").stdout
        assert sources_seen_by_web(mesh, ["home2"]) == [nat]

        # A run that reaches home2 from an address only its default route leads to.
        play = tmp_path / "play.yml"
        play.write_text(f"""
- hosts: home2
  gather_facts: false
  environment:
    SSH_CONNECTION: "{web} 40000 192.0.2.99 22"
  roles:
    - role: {REPO}/roles/wgmesh
""")
        mesh_file.write_text(original)
        before = mesh.run("home2", "cat", "/etc/wireguard/wg0.conf").stdout
        run = mesh.playbook(play=play, timeout=300)
        assert run.returncode != 0
        assert (f"home2 reaches this run's SSH client {web} through its default route"
                in " ".join(run.stdout.split()))
        assert "network.management_networks" in run.stdout
        assert mesh.run("home2", "cat", "/etc/wireguard/wg0.conf").stdout == before
    finally:
        mesh_file.write_text(original)
        assert mesh.playbook().returncode == 0
    assert rule not in mesh.run("home2", "ip", "rule", "show").stdout
    assert sources_seen_by_web(mesh, ["home2"]) == [pub1]


def test_the_ssh_client_is_found_without_ssh_connection(mesh, tmp_path):
    """become through sudo resets $SSH_CONNECTION: the role then finds the run's SSH client
    from the socket of the sshd it runs under, the same address the variable gives."""
    found = {}
    for label, env in (("variable", ""), ("socket", 'environment: {SSH_CONNECTION: ""}')):
        play = tmp_path / f"{label}.yml"
        play.write_text(f"""
- hosts: home2
  gather_facts: false
  {env}
  roles:
    - role: {REPO}/roles/wgmesh
  post_tasks:
    - name: Show the client the role found
      ansible.builtin.debug:
        msg: "CLIENT={{{{ __wgmesh_apply.ssh_client }}}}"
""")
        run = mesh.playbook(play=play, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]
        found[label] = re.search(r"CLIENT=(\S+)", run.stdout).group(1)
    assert found["variable"] == found["socket"]
    assert str(ipaddress.ip_address(found["socket"])) == found["socket"]


MARKER = "WGMESH-PLAINTEXT-MARKER-7f3a"


def test_nat_to_nat_pair_goes_through_a_relay_that_sees_no_plaintext(mesh, tmp_path):
    plan = mesh.plan()
    cafe1 = {p["name"]: p for p in plan["hosts"]["cafe1"]["peers"]}
    assert cafe1["home1"]["connection"] == "relay" and cafe1["home1"]["relay"] == "pub1"
    home1 = plan["hosts"]["home1"]["addresses"][0]
    listener = mesh.reversing_listener("home1", home1, 8080, 5)
    # Packet-buffered captures into pub1's private /tmp, read from the lab's side after.
    captures = {i: mesh.start("pub1", ["tcpdump", "-U", "-w", f"/tmp/relay-{i}.pcap", "-ni",
                                       i, "udp"]) for i in ("eth0", "wg0-hop")}
    try:
        time.sleep(1)  # let tcpdump attach
        for _ in range(5):
            assert mesh.send_marker("cafe1", home1, 8080, MARKER) == MARKER[::-1]
        time.sleep(1)
    finally:
        for p in captures.values():
            mesh.stop(p)
        mesh.stop(listener)
    for iface in captures:
        data = (mesh.lab.host_dir("pub1") / "tmp" / f"relay-{iface}.pcap").read_bytes()
        assert len(data) > 1000, f"nothing captured on {iface}"
        assert MARKER.encode() not in data and MARKER[::-1].encode() not in data, iface


def test_relay_forwards_only_the_pairs_policy_relates(mesh):
    """cafe1 may reach home1's WireGuard port through the relay; any other port of home1's
    hop address is dropped by the relay, and counted. cafe1's own filter refuses to send it;
    a compromised cafe1 (its table gone) still does not get it past the relay."""
    ruleset = mesh.run("pub1", "nft", "list", "set", "inet", "wgmesh", "relay6").stdout
    # cafe1 <-> home1 and branch1 <-> home1, each way, and nothing else
    assert ruleset.count(" . udp . 51820") == 4
    home1_hop = mesh.run("home1", "ip", "-6", "-o", "addr", "show", "dev", "wg0-hop").stdout
    home1_hop = home1_hop.split()[3].split("/")[0]
    send = f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(b"x", ("{home1_hop}", 9999))
"""
    refused = mesh.python("cafe1", send, check=False)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr
    before = mesh.counter("pub1", "dropped_relay")
    mesh.run("cafe1", "nft", "delete", "table", "inet", "wgmesh")
    try:
        mesh.python("cafe1", send)
        time.sleep(0.5)
        assert mesh.counter("pub1", "dropped_relay") - before >= 5
    finally:
        mesh.run("cafe1", "nft", "-f", RULESET)


def test_a_hop_tunnel_no_longer_needed_goes_away_with_its_file(mesh):
    """Without a relay, no pair is relayed: the relay and the nodes it carried take their hop
    tunnels down and remove the files; with the relay back, they return."""
    mesh_file = mesh.inventory / "mesh.yml"
    original = mesh_file.read_text()
    hosts = ("pub1", "home1", "cafe1")

    def hop_state():
        return {h: (mesh.run(h, "ip", "link", "show", "dev", "wg0-hop",
                             check=False).returncode == 0,
                    mesh.run(h, "test", "-e", "/etc/wireguard/wg0-hop.conf",
                             check=False).returncode == 0)
                for h in hosts}

    assert hop_state() == {h: (True, True) for h in hosts}
    try:
        assert "    relay: true" in original
        mesh_file.write_text(original.replace("    relay: true", ""))
        run = mesh.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        assert hop_state() == {h: (False, False) for h in hosts}
        assert all(r["changed"] == 0 for r in recap(mesh.playbook().stdout).values())
    finally:
        mesh_file.write_text(original)
        assert mesh.playbook().returncode == 0
    assert hop_state() == {h: (True, True) for h in hosts}
