"""Subnet routing as Tailscale does it, on a lab of its own: three routers with LANs, one
approving 10.0.0.0/8 and two approving prefixes inside it (the longest prefix wins), and a
rule from one routed LAN to two others (subnet to subnet: peers and filters on both ends)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from conftest import PY
from meshlab import MeshLab

pytestmark = pytest.mark.lab

# LAN hosts without WireGuard behind each router. r2 approves all of 10.0.0.0/8 and has
# LAN C; r1 (LAN A) and r3 (LAN B) approve prefixes inside it.
TOPOLOGY = """\
plugin: wgmesh_lab
name: wgn
segments:
  internet: {subnet: 192.0.2.0/24, mgmt: 192.0.2.1}
  lana: {subnet: 10.10.0.0/24}
  lanb: {subnet: 10.20.0.0/24}
  lanc: {subnet: 10.30.0.0/24}
hosts:
  r1: {interfaces: {internet: 192.0.2.31, lana: 10.10.0.1}}
  r2: {interfaces: {internet: 192.0.2.32, lanc: 10.30.0.1}}
  r3: {interfaces: {internet: 192.0.2.33, lanb: 10.20.0.1}}
  a: {interfaces: {lana: 10.10.0.5}, wireguard: false}
  b: {interfaces: {lanb: 10.20.0.5}, wireguard: false}
  c: {interfaces: {lanc: 10.30.0.5}, wireguard: false}
"""

MESH = """\
plugin: wgmesh
policy: {policy}
lockfile: /run/wgmesh-lab/{name}/mesh.lock.yml
nodes:
  r1:
    ansible_host: 192.0.2.31
    endpoint: 192.0.2.31:51820
    tags: [tag:router]
    advertise_routes: [10.10.0.0/24]
  r2:
    ansible_host: 192.0.2.32
    endpoint: 192.0.2.32:51820
    tags: [tag:router]
    advertise_routes: [10.0.0.0/8]
  r3:
    ansible_host: 192.0.2.33
    endpoint: 192.0.2.33:51820
    tags: [tag:router]
    advertise_routes: [10.20.0.0/24]
"""

POLICY = {
    "tagOwners": {"tag:router": []},
    "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
    "acls": [{"action": "accept", "src": ["10.10.0.0/24"],
              "dst": ["10.20.0.0/24:443", "10.30.0.0/24:443"]}],
}

SERVE = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
for p in (22, 443):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(s.recv(64).decode() or "empty")
except OSError:
    print("no")
"""


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    source = tmp_path_factory.mktemp("routing-src")
    (source / "topology.yml").write_text(TOPOLOGY)
    # The policy lives outside the inventory folder: Ansible reads every file there.
    (source / "policy.hujson").write_text(json.dumps(POLICY))
    mesh = MESH.format(policy=source / "policy.hujson", name="wgn")
    lab = MeshLab(tmp_path_factory.mktemp("routing"), "wgn", source / "topology.yml", mesh)
    lab.lab.down()
    lab.lab.up()
    try:
        run = lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        # LAN A's hosts reach the other LANs through their router (a LAN admin's route).
        for lan in ("10.20.0.0/24", "10.30.0.0/24"):
            lab.run("a", "ip", "route", "add", lan, "via", "10.10.0.1")
        servers = [lab.spawn(n, SERVE) for n in ("b", "c")]
        for p in servers:
            assert p.stdout.readline().strip() == "ready"
        yield lab
        for p in servers:
            lab.stop(p)
    finally:
        lab.lab.down()


def connect(lab, src: str, host: str, port: int) -> str:
    return lab.run(src, PY, "-c", CONNECT, host, str(port)).stdout.strip()


def allowed_ips(lab, node: str) -> dict[str, list[ipaddress.IPv4Network]]:
    """Running peers of a host: name -> the IPv4 prefixes WireGuard routes to it."""
    keys = {p["public_key"]: p["name"] for h in lab.plan()["hosts"].values()
            for p in h["peers"]}
    out = {}
    for line in lab.run(node, "wg", "show", "wg0", "allowed-ips").stdout.splitlines():
        key, *nets = line.split()
        out[keys[key]] = [n for n in map(ipaddress.ip_network, nets) if n.version == 4
                          and n.prefixlen < 32]
    return out


def test_longest_prefix_wins_and_no_two_peers_share_an_address(routed):
    r1 = allowed_ips(routed, "r1")
    assert r1["r3"] == [ipaddress.ip_network("10.20.0.0/24")]
    # r2 carries LAN C as part of the rest of 10.0.0.0/8: not LAN A (r1's own), not LAN B.
    lan_a, lan_b, lan_c = (ipaddress.ip_network(f"10.{n}.0.0/24") for n in (10, 20, 30))
    assert any(lan_c.subnet_of(n) for n in r1["r2"])
    assert not any(n.overlaps(m) for n in r1["r2"] for m in (lan_a, lan_b))
    for node in ("r1", "r2", "r3"):
        nets = [(peer, n) for peer, ns in allowed_ips(routed, node).items() for n in ns]
        assert not any(n.overlaps(m) for i, (p, n) in enumerate(nets)
                       for q, m in nets[i + 1:] if p != q), (node, nets)


def test_subnet_to_subnet_goes_through_the_router_of_the_longest_prefix(routed):
    # LAN B is reached through r3 (which source-NATs into it), though r2 approves 10/8.
    assert connect(routed, "a", "10.20.0.5", 443) == "10.20.0.1"
    assert connect(routed, "a", "10.30.0.5", 443) == "10.30.0.1"  # the rest through r2
    # Only what the rule allows, checked at the source router and at the destination's.
    assert connect(routed, "a", "10.20.0.5", 22) == "no"
    assert connect(routed, "a", "10.30.0.5", 22) == "no"
    # Nothing flows the other way: no rule lets LAN B reach LAN A.
    routed.run("b", "ip", "route", "add", "10.10.0.0/24", "via", "10.20.0.1")
    try:
        srv = routed.spawn("a", SERVE)
        assert srv.stdout.readline().strip() == "ready"
        try:
            assert connect(routed, "b", "10.10.0.5", 443) == "no"
        finally:
            routed.stop(srv)
    finally:
        routed.run("b", "ip", "route", "del", "10.10.0.0/24", "via", "10.20.0.1")


def test_a_second_run_changes_nothing(routed):
    run = routed.playbook()
    assert run.returncode == 0 and "changed=0" in run.stdout, run.stdout[-2000:]
    assert "changed=1" not in run.stdout
