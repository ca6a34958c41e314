"""Beyond a flat mesh, on the lab: LAN-direct pairs, subnet routers, mesh names."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PY
from meshlab import MeshLab

pytestmark = pytest.mark.lab

HOLD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
time.sleep(5)
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    lab = MeshLab(tmp_path_factory.mktemp("ext"), "wge")
    lab.lab.down()
    lab.lab.up()
    run = lab.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    yield lab
    lab.lab.down()


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
    assert home1["home2"]["endpoint"] == "198.51.100.11:51820"
    home2 = plan["hosts"]["home2"]["addresses"][0]
    before = wan_packets(mesh, "nat-home")
    ping = mesh.run("home1", "ping", "-q", "-c", "100", "-i", "0.01", home2)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    # Keepalives to public peers may cross the NAT meanwhile; 100 pings may not.
    assert wan_packets(mesh, "nat-home") - before < 10
    endpoints = mesh.run("home1", "wg", "show", "wg0", "endpoints").stdout
    assert "198.51.100.11:51820" in endpoints


def test_subnet_router_carries_only_what_policy_allows(mesh):
    legacy = "198.51.100.130"
    listener = subprocess.Popen(mesh.lab.exec_argv("legacy", [PY, "-c", (
        "import socket; s=socket.socket(); s.bind(('0.0.0.0', 80)); s.listen(); "
        "print('ready', flush=True); s.accept()")]), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        assert tcp(mesh, "home1", legacy, 22)        # alice: legacy:22 allowed
        assert not tcp(mesh, "home1", legacy, 80)    # ... and nothing else there
        assert not tcp(mesh, "home2", legacy, 22)    # bob: nothing in that LAN
        assert not tcp(mesh, "cafe1", legacy, 22)
    finally:
        listener.kill()
    # The legacy host sees the router's LAN address (source NAT into the LAN).
    hold = subprocess.Popen(mesh.lab.exec_argv("home1", [PY, "-c", HOLD, legacy, "22"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "connected"
        seen = mesh.run("legacy", "ss", "-Htn", "state", "established", "( sport = :22 )")
        assert "198.51.100.129:" in seen.stdout, seen.stdout
    finally:
        hold.kill()


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
    assert mesh.run("home1", "getent", "hosts", "cafe1", check=False).returncode != 0
    assert mesh.run("cafe1", "getent", "hosts", "home1", check=False).returncode != 0
    ping = mesh.run("home1", "ping", "-c1", "-W2", "pub1.mesh.internal", check=False)
    assert ping.returncode == 0, ping.stdout
