"""NAT traversal on the lab (docs/relay.md): home1 (behind nat-home) and branch1 (behind
nat-branch), two NATs that keep a host's port for every destination and admit only replies,
start on the relay pub1 and punch a direct path; cafe1, behind the symmetric nat-cafe, stays
on the relay. Lighthouses: pub1 and pub2. The agents run as `wgmesh lab agents` starts them
(namespace hosts have no systemd)."""

from __future__ import annotations

import json
import re
import time

import pytest
from meshlab import built_mesh, ping_losses, recap

pytestmark = pytest.mark.lab

DIRECT = "direct (punched)"
MARKER = "punched-path-marker-7f3a"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "nat", "wgn")


def agent(mesh, node: str) -> dict:
    out = mesh.run(node, "cat", "/var/lib/wgmesh/agent.json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}


def path(mesh, node: str, peer: str) -> str | None:
    return agent(mesh, node).get("peers", {}).get(peer, {}).get("path")


def wait_for(predicate, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


def both_direct(mesh) -> bool:
    return path(mesh, "home1", "branch1") == DIRECT and path(mesh, "branch1", "home1") == DIRECT


def hop_bytes(mesh, node: str) -> int:
    """Bytes pub1's hop interface moved for ``node`` (its hop peer's rx + tx)."""
    key = mesh.run(node, "wg", "show", "wg0", "public-key").stdout.strip()
    for line in mesh.run("pub1", "wg", "show", "wg0-hop", "dump").stdout.splitlines()[1:]:
        f = line.split("\t")
        if f[0] == key:
            return int(f[5]) + int(f[6])
    raise AssertionError(f"{node} is no hop peer of pub1")


def endpoint_of(mesh, node: str, peer: str) -> str:
    key = mesh.run(peer, "wg", "show", "wg0", "public-key").stdout.strip()
    for line in mesh.run(node, "wg", "show", "wg0", "endpoints").stdout.splitlines():
        k, _, ep = line.partition("\t")
        if k == key:
            return ep
    raise AssertionError(f"{peer} is no peer of {node}")


def logs(mesh) -> str:
    return "\n".join(f"{n}: " + mesh.run(n, "cat", "/var/log/wgmesh-agent.log").stdout
                     for n in ("home1", "branch1"))


def stop_agents(mesh, *nodes: str) -> None:
    for node in nodes:
        mesh.run(node, "pkill", "-f", "/var/lib/wgmesh/agent.pyz", check=False)
    for node in nodes:
        assert wait_for(lambda n=node: mesh.run(n, "pgrep", "-f", "/var/lib/wgmesh/agent.pyz",
                                                check=False).returncode != 0, 5) is not None


def back_to_relay(mesh) -> None:
    """home1 and branch1 as before any punch: their agents stopped, the relay endpoint set."""
    stop_agents(mesh, "home1", "branch1")
    for node, peer in (("home1", "branch1"), ("branch1", "home1")):
        key = mesh.run(peer, "wg", "show", "wg0", "public-key").stdout.strip()
        hop = mesh.plan()["hosts"][node]["peers"]
        relay_ep = next(p["endpoint"] for p in hop if p["name"] == peer)
        mesh.run(node, "wg", "set", "wg0", "peer", key, "endpoint", relay_ep)


def test_pair_behind_two_nats_goes_direct_within_seconds(mesh, tmp_path):
    plan = mesh.plan()
    home1 = {p["name"]: p for p in plan["hosts"]["home1"]["peers"]}
    assert home1["branch1"]["connection"] == "relay" and home1["branch1"]["relay"] == "pub1"
    assert endpoint_of(mesh, "home1", "branch1").startswith("[fd7a:115c:a1e1::")

    started = mesh.wgmesh("lab", "agents")  # as README and docs/lab.md show it
    assert started.returncode == 0, started.stderr
    assert started.stdout == ("agent and monitor started on: pub1, pub2, pub3, home1, home2, "
                              "cafe1, branch1\n")
    took = wait_for(lambda: both_direct(mesh), 20)
    assert took is not None and took < 10, (agent(mesh, "home1"), agent(mesh, "branch1"))
    print(f"\nhome1 <-> branch1 direct {took:.1f} s after the agents started")
    assert endpoint_of(mesh, "home1", "branch1") == "192.0.2.23:51820"
    assert endpoint_of(mesh, "branch1", "home1") == "192.0.2.21:51820"

    # The relay no longer carries the pair: 300 pings move no more than keepalives there.
    before = {n: hop_bytes(mesh, n) for n in ("home1", "branch1")}
    branch1 = mesh.mesh_address("branch1")
    ping = mesh.run("home1", "ping", "-q", "-c", "300", "-i", "0.01", branch1, timeout=30)
    assert " 0% packet loss" in ping.stdout, ping.stdout
    moved = {n: hop_bytes(mesh, n) - before[n] for n in before}
    assert all(v < 1000 for v in moved.values()), moved

    # A marker between them crosses both NAT routers' uplinks as WireGuard ciphertext, and
    # never pub1.
    branch1_hop = home1["branch1"]["endpoint"].split("]")[0].strip("[")
    home1_hop = {p["name"]: p for p in plan["hosts"]["branch1"]["peers"]}["home1"]["endpoint"]
    home1_hop = home1_hop.split("]")[0].strip("[")
    pcaps = {r: tmp_path / f"{r}.pcap" for r in ("nat-home", "nat-branch")}
    captures = [mesh.start(r, ["tcpdump", "-U", "-w", str(f), "-ni", "wan",
                               "udp and host 192.0.2.21 and host 192.0.2.23"])
                for r, f in pcaps.items()]
    captures.append(mesh.start("pub1", ["tcpdump", "-U", "-w", "/tmp/pair.pcap", "-ni", "any",
                                        f"host {home1_hop} or host 192.0.2.23 or "
                                        f"host {branch1_hop}"]))
    home1_ip = mesh.mesh_address("home1")
    listener = mesh.reversing_listener("home1", home1_ip, 8080, 3)
    try:
        time.sleep(1)  # let tcpdump attach
        for _ in range(3):
            assert mesh.send_marker("branch1", home1_ip, 8080, MARKER) == MARKER[::-1]
        time.sleep(1)
    finally:
        for p in captures:
            mesh.stop(p)
        mesh.stop(listener)
    for router, f in pcaps.items():
        data = f.read_bytes()
        assert len(data) > 1000, f"nothing between the two NATs on {router}'s uplink"
        assert MARKER.encode() not in data and MARKER[::-1].encode() not in data, router
    relay = (mesh.lab.host_dir("pub1") / "tmp" / "pair.pcap").read_bytes()
    # pub1 sees branch1's NAT only for branch1's own keepalives and questions (a few
    # packets of at most 224 bytes), never the pair's traffic.
    assert MARKER.encode() not in relay and len(relay) < 24 + 20 * (16 + 300), len(relay)


def test_symmetric_nat_stays_on_the_relay_and_never_punches(mesh):
    cafe1 = agent(mesh, "cafe1")
    assert cafe1["nat"] == "symmetric", cafe1
    assert len(set(cafe1["seen"].values())) == 2  # two lighthouses, two different ports
    assert cafe1["peers"]["home1"]["attempts"] == 0
    assert cafe1["peers"]["home1"]["path"] == "relay via pub1"
    home1 = agent(mesh, "home1")["peers"]["cafe1"]
    assert home1["attempts"] == 0 and home1["peer_nat"] == "symmetric", home1
    assert endpoint_of(mesh, "home1", "cafe1").startswith("[fd7a:115c:a1e1::")
    # ... and keeps working: carol reaches alice's 8080 through the relay.
    home1_ip = mesh.mesh_address("home1")
    listener = mesh.spawn("home1", (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{home1_ip}', 8080)); s.listen(); print('ready', flush=True)\n"
        "c, _ = s.accept(); c.sendall(b'ok'); c.close()\n"))
    try:
        assert listener.stdout.readline().strip() == "ready"
        out = mesh.python("cafe1", f"""
import socket
print(socket.create_connection(("{home1_ip}", 8080), timeout=5).recv(2).decode())
""")
        assert out.stdout.strip() == "ok"
    finally:
        mesh.stop(listener)


def test_second_run_keeps_the_punched_path_and_reports_no_drift(mesh, tmp_path):
    assert both_direct(mesh)
    run = mesh.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    assert all(r["changed"] == 0 for h, r in recap(run.stdout).items() if h != "localhost"), \
        run.stdout[-3000:]
    check = mesh.playbook("--check")
    assert check.returncode == 0 and all(
        r["changed"] == 0 for h, r in recap(check.stdout).items() if h != "localhost"), \
        check.stdout[-3000:]
    assert endpoint_of(mesh, "home1", "branch1") == "192.0.2.23:51820"
    assert both_direct(mesh)
    status = mesh.playbook("-e", f"wgmesh_live_dir={tmp_path}", play="playbooks/status.yml")
    assert status.returncode == 0, status.stdout[-3000:]
    assert re.search(r"branch1 direct \(punched\) \(upgrade at [0-9T:-]+Z\), endpoint "
                     r"192\.0\.2\.23:51820", status.stdout), status.stdout[-3000:]
    assert "cafe1 relay via pub1, endpoint [fd7a:115c:a1e1::" in status.stdout
    # wgmesh graph draws the punched pair as direct, the symmetric one through its relay.
    picture = mesh.wgmesh("graph", "--format", "svg", "--live", str(tmp_path))
    assert picture.returncode == 0, picture.stderr
    assert 'data-pair="branch1 home1" data-connection="punched"' in picture.stdout
    assert 'data-pair="cafe1 home1" data-connection="relay" data-relay="pub1"' in picture.stdout


def test_remapped_nat_falls_back_to_the_relay_then_goes_direct_again(mesh):
    assert both_direct(mesh)
    branch1 = mesh.mesh_address("branch1")
    ping = mesh.record("home1", ["ping", "-D", "-i", "0.1", "-w", "45", branch1])
    time.sleep(2)
    # nat-branch restarts with another external port for branch1: every mapping is gone.
    mesh.run("nat-branch", "nft", "insert", "rule", "ip", "wgmesh_lab_nat", "postrouting",
             "oifname", "wan", "ip", "saddr", "198.18.0.10", "udp", "sport", "51820",
             "snat", "to", "192.0.2.23:40000")
    mesh.run("nat-branch", "conntrack", "-F", check=False)
    remapped = time.monotonic()
    fell_back = wait_for(lambda: path(mesh, "home1", "branch1") == "relay via pub1", 20)
    assert fell_back is not None and fell_back <= 15, agent(mesh, "home1")
    again = wait_for(lambda: both_direct(mesh)
                     and endpoint_of(mesh, "home1", "branch1") == "192.0.2.23:40000", 40)
    assert again is not None, (agent(mesh, "home1"), agent(mesh, "branch1"))
    print(f"\nfallback {fell_back:.1f} s after the remap, direct again "
          f"{time.monotonic() - remapped:.1f} s after it")
    out = mesh.recorded(ping, timeout=60)
    replies, lost = ping_losses(out)
    # Lost: the pings until the fallback (one every 100 ms), and the punch's own moment.
    assert replies > 300 and len(lost) <= fell_back * 10 + 15, (fell_back, lost, logs(mesh))
    a = agent(mesh, "home1")["peers"]["branch1"]
    assert a["fallbacks"] >= 1 and a["upgrades"] >= 2, a


def test_without_lighthouses_everything_still_works_through_relays(mesh):
    stop_agents(mesh, "pub1", "pub2")
    back_to_relay(mesh)
    assert mesh.lab.start_agents(["home1", "branch1"]) == ["home1", "branch1"]
    time.sleep(8)
    for node, peer in (("home1", "branch1"), ("branch1", "home1")):
        a = agent(mesh, node)
        assert a["nat"] == "pending" and a["peers"][peer]["path"] == "relay via pub1", a
        assert endpoint_of(mesh, node, peer).startswith("[fd7a:115c:a1e1::")
    ping = mesh.run("home1", "ping", "-q", "-c", "50", "-i", "0.02", mesh.mesh_address("branch1"))
    assert " 0% packet loss" in ping.stdout, ping.stdout


HOSTILE = r"""
import json, socket, subprocess, sys
# A lighthouse gone bad: it answers every question with the asker's real mapping (so the
# asker trusts its NAT) and a wrong address for every peer.
me, port = sys.argv[1], int(sys.argv[2])
clients = json.load(open("/var/lib/wgmesh/bundle.json"))["agent"]["clients"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"wg0")
s.bind((me, port))
print("ready", flush=True)
while True:
    data, (src, sport) = s.recvfrom(2000)
    ask = json.loads(data)
    eps = dict(l.split("\t") for l in subprocess.run(["wg", "show", "wg0", "endpoints"],
               capture_output=True, text=True).stdout.splitlines())
    you = eps.get(clients.get(src, {}).get("public_key"))
    peers = {k: {"endpoint": "192.0.2.99:51820", "verdict": "cone", "age": 0}
             for k in ask.get("want", [])}
    s.sendto(json.dumps({"t": "seen", "you": you, "peers": peers}).encode(), (src, sport))
"""


def test_a_lying_lighthouse_leaves_the_pair_on_its_relay_and_working(mesh):
    back_to_relay(mesh)
    liars = []
    for lh in ("pub1", "pub2"):
        p = mesh.spawn(lh, HOSTILE, mesh.mesh_address(lh), "51822")
        assert p.stdout.readline().strip() == "ready"
        liars.append(p)
    try:
        branch1 = mesh.mesh_address("branch1")
        ping = mesh.record("home1", ["ping", "-D", "-i", "0.1", "-w", "14", branch1])
        assert mesh.lab.start_agents(["home1", "branch1"]) == ["home1", "branch1"]
        tried = wait_for(lambda: agent(mesh, "home1").get("peers", {}).get(
            "branch1", {}).get("attempts", 0) >= 1, 10)
        assert tried is not None
        back = wait_for(lambda: path(mesh, "home1", "branch1") == "relay via pub1"
                        and agent(mesh, "home1")["peers"]["branch1"]["last_event"]
                        == "punch failed", 10)
        assert back is not None, agent(mesh, "home1")
        out = mesh.recorded(ping, timeout=30)
    finally:
        for p in liars:
            mesh.stop(p)
    a = agent(mesh, "home1")["peers"]["branch1"]
    assert a["upgrades"] == 0 and a["candidate"] == "192.0.2.99:51820", a
    assert endpoint_of(mesh, "home1", "branch1").startswith("[fd7a:115c:a1e1::")
    replies, lost = ping_losses(out)
    # The pair lost at most the failed attempt (6 s), and works on the relay after it.
    assert replies >= 70 and len(lost) <= 60, lost
    ping = mesh.run("home1", "ping", "-q", "-c", "20", "-i", "0.05", branch1)
    assert " 0% packet loss" in ping.stdout, ping.stdout
