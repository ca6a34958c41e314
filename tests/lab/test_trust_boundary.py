"""The data plane has no side doors (issue 9), on the lab: the hop interface carries only
end-to-end WireGuard, mesh addresses are neither reachable nor forgeable from the underlay,
and a change that takes access away ends connections already open while flows it leaves
alone lose no packet. Each test fails against a ruleset that accepts whatever is not on wg0,
or that accepts established connections before looking at the sets."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import PY
from meshlab import built_mesh, ping_losses

pytestmark = pytest.mark.lab

RULESET = "/etc/wgmesh/nftables.nft"  # the table file every interface loads first

TCP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(30)
    try:
        while data := c.recv(100):
            c.sendall(data)
    except OSError:
        pass
    c.close()
"""

UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100); print(peer[0], data.decode(), flush=True)
"""

# Sends a byte every 0.2 s on one TCP connection and prints when each echo came back (or
# did not), until killed.
HOLD = """
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(1)
print("connected", flush=True)
while True:
    t = time.time()
    try:
        s.sendall(b"x"); ok = s.recv(10) == b"x"
    except OSError:
        ok = False
    print(json.dumps([t, ok]), flush=True)
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "trust", "wgb")


def listen(mesh, node: str, code: str, *args: str):
    proc = mesh.spawn(node, code, *args)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def connects(mesh, src: str, host: str, port: int, bind: str | None = None) -> bool:
    out = mesh.python(src, f"""
import socket
fam = socket.AF_INET6 if ":" in "{host}" else socket.AF_INET
s = socket.socket(fam); s.settimeout(2)
if {bind!r}:
    s.bind(({bind!r}, 0))
try:
    s.connect(("{host}", {port})); print("yes")
except OSError:
    print("no")
""")
    return out.stdout.strip() == "yes"


def hop_address(mesh, node: str) -> str:
    out = mesh.run(node, "ip", "-6", "-o", "addr", "show", "dev", "wg0-hop").stdout
    return out.split()[3].split("/")[0]


def test_hop_interface_carries_only_end_to_end_wireguard(mesh):
    """A compromised relay (pub1, its own table gone) reaches a service on home1 through the
    hop tunnel only if home1 filters nothing but wg0. home1 must drop it, and count it."""
    home1_hop = hop_address(mesh, "home1")
    server = listen(mesh, "home1", TCP_LISTEN, "::", "5432")
    before = mesh.counter("home1", "dropped_hop")
    mesh.run("pub1", "nft", "delete", "table", "inet", "wgmesh")
    try:
        # home1 is behind NAT: until its hop tunnel has a session, the relay's packets do
        # not reach it at all. Try until one arrives (and is dropped); none may connect.
        for _ in range(10):
            assert not connects(mesh, "pub1", home1_hop, 5432)
            if mesh.counter("home1", "dropped_hop") > before:
                break
            time.sleep(1)
    finally:
        mesh.run("pub1", "nft", "-f", RULESET)
        mesh.stop(server)
    assert mesh.counter("home1", "dropped_hop") > before
    # The relayed pair itself still works: carol (cafe1) may reach alice (home1) on 8080.
    home1 = mesh.mesh_address("home1")
    server = listen(mesh, "home1", TCP_LISTEN, home1, "8080")
    try:
        assert connects(mesh, "cafe1", home1, 8080)
    finally:
        mesh.stop(server)


def test_mesh_addresses_are_not_reachable_from_the_underlay(mesh):
    """legacy, on the office LAN beside pub3, routes the mesh pool through pub3 and tries a
    port on pub3's mesh address; Linux accepts packets for a local address on any interface,
    so only the filter stops it."""
    pub3 = mesh.mesh_address("pub3")
    server = listen(mesh, "pub3", TCP_LISTEN, "0.0.0.0", "5432")
    before = mesh.counter("pub3", "dropped_underlay")
    mesh.run("legacy", "ip", "route", "replace", "100.64.0.0/10", "via", "198.51.100.129")
    try:
        assert not connects(mesh, "legacy", pub3, 5432)
        # The same service on pub3's office address stays open to the office: the underlay
        # is not filtered.
        assert connects(mesh, "legacy", "198.51.100.129", 5432)
    finally:
        mesh.run("legacy", "ip", "route", "del", "100.64.0.0/10")
        mesh.stop(server)
    assert mesh.counter("pub3", "dropped_underlay") > before


def test_mesh_source_addresses_come_only_from_their_owner(mesh):
    """A forged mesh source address is dropped whether it arrives from the underlay (legacy
    claiming home1's address at pub3) or from another peer (home2 claiming home1's address
    at pub1: WireGuard takes it only from the peer whose AllowedIPs hold it)."""
    home1 = mesh.mesh_address("home1")
    listener = listen(mesh, "pub3", UDP_LISTEN, "9999")
    before = mesh.counter("pub3", "dropped_underlay")
    mesh.run("legacy", "ip", "addr", "add", f"{home1}/32", "dev", "eth0")
    try:
        mesh.python("legacy", f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{home1}", 0))
for _ in range(5):
    s.sendto(b"forged", ("198.51.100.129", 9999))
""")
        time.sleep(0.5)
    finally:
        mesh.run("legacy", "ip", "addr", "del", f"{home1}/32", "dev", "eth0")
        mesh.stop(listener)
    assert "forged" not in listener.stdout.read()
    assert mesh.counter("pub3", "dropped_underlay") - before >= 5

    pub1 = mesh.mesh_address("pub1")
    listener = listen(mesh, "pub1", UDP_LISTEN, "53")  # bob may send to pub1:53/udp
    mesh.run("home2", "ip", "addr", "add", f"{home1}/32", "dev", "lo")
    try:
        mesh.python("home2", f"""
import socket
for src in ("{home1}", None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if src:
        s.bind((src, 0))
    for _ in range(3):
        s.sendto(b"from-" + (b"forged" if src else b"bob"), ("{pub1}", 53))
""")
        time.sleep(0.5)
    finally:
        mesh.run("home2", "ip", "addr", "del", f"{home1}/32", "dev", "lo")
        mesh.stop(listener)
    received = listener.stdout.read()
    assert "from-bob" in received and "from-forged" not in received


def generation(mesh, host: str) -> int:
    """The generation of the table the host runs (docs/nftables.md)."""
    table = mesh.run(host, "nft", "list", "chain", "inet", "wgmesh", "mesh_in").stdout
    return int(re.search(r"ct mark (0x[0-9a-f]+) accept", table).group(1), 16)


def connection_marks(mesh, host: str, *match: str) -> set[int]:
    """The conntrack marks of the host's connections that ``conntrack -L`` options match."""
    out = mesh.run(host, "conntrack", "-L", *match).stdout
    return {int(m) for m in re.findall(r"\bmark=(\d+)", out)}


def test_revoking_access_ends_open_connections_and_spares_other_flows(mesh):
    """alice (home1) holds a TCP connection to bob's (home2) port 8080 while a run applies a
    policy that moves the rule to 8081 (the two stay peers, so only the filter can end it).
    The connection stops carrying data once the run has applied; pings from home1 to pub1,
    which the change does not touch, lose nothing during the run."""
    home2, pub1 = mesh.mesh_address("home2"), mesh.mesh_address("pub1")
    server = listen(mesh, "home2", TCP_LISTEN, "0.0.0.0", "8080")
    hold = mesh.start("home1", [PY, "-u", "-c", HOLD, home2, "8080"])
    assert hold.stdout.readline().strip() == "connected", hold.stderr.read()
    pings = mesh.record("home1", ["ping", "-i", "0.01", pub1])
    policy = mesh.inventory.parent / "revoked.hujson"  # not beside mesh.yml: a source
    original = (mesh.inventory / "mesh.yml").read_text()
    lab_policy = re.search(r"^policy: (.+)$", original, re.M).group(1)
    text = Path(lab_policy).read_text()
    changed = text.replace('"dst": ["bob@example.com:8080"]', '"dst": ["bob@example.com:8081"]')
    changed = changed.replace('"home2:8080"]', '"home2:8081"]')
    assert changed != text
    policy.write_text(changed)
    (mesh.inventory / "mesh.yml").write_text(original.replace(lab_policy, str(policy)))
    try:
        time.sleep(2)
        # The connection passes on its table's generation (the fast path) at both ends.
        for host in ("home1", "home2"):
            assert connection_marks(mesh, host, "-p", "tcp", "--dport", "8080", "--state",
                                    "ESTABLISHED") == {generation(mesh, host)}
        before = generation(mesh, "home1")
        start = time.time()
        run = mesh.playbook()
        end = time.time()
        assert run.returncode == 0, run.stdout[-3000:]
        time.sleep(3)
        # A new table, a new generation: the ping flow, checked again, carries it now.
        assert generation(mesh, "home1") != before
        assert connection_marks(mesh, "home1", "-p", "icmp", "-d", pub1) == {
            generation(mesh, "home1")}
    finally:
        mesh.stop(hold)
        os.killpg(pings.pid, signal.SIGINT)  # ping prints its summary and ends
        ping_out = mesh.recorded(pings, timeout=10)
        mesh.stop(server)
        (mesh.inventory / "mesh.yml").write_text(original)
    exchanges = [json.loads(line) for line in hold.stdout.read().splitlines() if line]
    assert any(ok for t, ok in exchanges if t < start), "the connection never carried data"
    after = [ok for t, ok in exchanges if t > end + 0.5]
    assert after and not any(after), exchanges[-10:]
    replies, lost = ping_losses(ping_out)
    assert replies > 500 and not lost, (replies, lost)
    # A new connection to the old port is refused too; the new port is open.
    server = listen(mesh, "home2", TCP_LISTEN, "0.0.0.0", "8081")
    try:
        assert connects(mesh, "home1", home2, 8081)
        assert not connects(mesh, "home1", home2, 8080)
    finally:
        mesh.stop(server)
    restore = mesh.playbook()
    assert restore.returncode == 0, restore.stdout[-3000:]
