"""Lab hosts behave like separate servers: Ansible reaches each over SSH, each has its own
identity and files, and NAT routers behave as their topology says."""

import json
import re
import time

import pytest

pytestmark = pytest.mark.lab

UDP_ECHO_SOURCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {port}))
print("ready", flush=True)
s.settimeout(10)
for _ in range({count}):
    data, addr = s.recvfrom(100)
    print(addr[0], addr[1], data.decode(), flush=True)
"""

TCP_ACCEPT = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
s.listen()
print("ready", flush=True)
s.settimeout(15)
while True:
    c, addr = s.accept()
    print(addr[0], flush=True)
    c.close()
"""

TCP_CONNECT = """
import socket, sys
try:
    socket.create_connection(("{host}", {port}), timeout={timeout}).close()
    print("connected")
except OSError as exc:
    print("failed", type(exc).__name__)
"""


def wait_ready(proc):
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()


def test_ansible_pings_every_host_over_ssh(lab):
    out = lab.ansible("all", "-m", "ansible.builtin.ping")
    assert out.returncode == 0, out.stdout + out.stderr
    ok = set(re.findall(r"^(\S+) \| SUCCESS", out.stdout, re.M))
    assert ok == set(lab.topo.hosts), out.stdout


def test_each_host_has_its_own_hostname_and_etc_wireguard(lab):
    put = lab.ansible("all", "-m", "ansible.builtin.copy",
                      "-a", "dest=/etc/wireguard/owner content={{ inventory_hostname }} mode=0600")
    assert put.returncode == 0, put.stdout + put.stderr
    got = lab.ansible("all", "-m", "ansible.builtin.shell",
                      "-a", "echo $(hostname) $(cat /etc/wireguard/owner) "
                            "$(stat -c %a /etc/wireguard) $(ls /etc/wireguard | wc -l)")
    assert got.returncode == 0, got.stdout + got.stderr
    for host in lab.topo.hosts:
        # "<host> | CHANGED | rc=0 >>\n<hostname> <owner> <mode> <files>"
        block = re.search(rf"^{host} \|.*\n(.*)$", got.stdout, re.M)
        assert block, got.stdout
        assert block.group(1).split() == [host, host, "700", "1"]
    # The machine's own /etc was never written.
    from pathlib import Path
    assert not Path("/etc/wireguard/owner").exists()


def test_nat_lets_hosts_out_but_nothing_in(lab):
    pub = str(lab.topo.hosts["pub1"].address)
    home1 = str(lab.topo.hosts["home1"].address)
    nat_wan = str(lab.topo.routers["nat-home"].wan_address)

    # Outbound: home1 reaches pub1, which sees the NAT router's public address.
    listener = lab.spawn("pub1", TCP_ACCEPT.format(port=7001))
    try:
        wait_ready(listener)
        out = lab.python("home1", TCP_CONNECT.format(host=pub, port=7001, timeout=3)).stdout
        assert out.strip() == "connected"
        assert listener.stdout.readline().strip() == nat_wan
    finally:
        lab.stop(listener)

    # Inbound: a listener on home1 is reachable on its LAN (control) but not from outside,
    # neither at its LAN address nor at the NAT's public address.
    listener = lab.spawn("home1", TCP_ACCEPT.format(port=7002))
    try:
        wait_ready(listener)
        control = lab.python("home2", TCP_CONNECT.format(host=home1, port=7002, timeout=3))
        assert control.stdout.strip() == "connected"
        for target in (home1, nat_wan):
            out = lab.python("pub1", TCP_CONNECT.format(host=target, port=7002, timeout=1.5))
            assert out.stdout.startswith("failed"), (target, out.stdout)
    finally:
        lab.stop(listener)


def observed_source_ports(lab, client, port, trials=3):
    """For each trial: the source ports two public hosts saw for one client socket."""
    receivers = {h: lab.spawn(h, UDP_ECHO_SOURCE.format(port=port, count=trials))
                 for h in ("pub1", "pub2")}
    seen = []
    try:
        for proc in receivers.values():
            wait_ready(proc)
        for trial in range(trials):
            sport = 40000 + trial
            send = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {sport}))
for dst in {json.dumps([str(lab.topo.hosts[h].address) for h in receivers])}:
    s.sendto(b"t{trial}", (dst, {port}))
"""
            lab.python(client, send)
            ports = [int(proc.stdout.readline().split()[1]) for proc in receivers.values()]
            seen.append((sport, ports))
    finally:
        for proc in receivers.values():
            lab.stop(proc)
    return seen


def test_endpoint_independent_nat_keeps_one_mapping(lab):
    for sport, (a, b) in observed_source_ports(lab, "home1", 7101):
        assert a == b == sport


def test_symmetric_nat_picks_a_new_port_per_destination(lab):
    trials = observed_source_ports(lab, "cafe1", 7102)
    for _sport, (a, b) in trials:
        assert a != b, trials


def test_lab_status_and_idempotent_up(lab):
    before = {h: lab.lab.init_pid(h) for h in lab.topo.hosts}
    start = time.monotonic()
    lab.lab.up()
    assert time.monotonic() - start < 5
    assert {h: lab.lab.init_pid(h) for h in lab.topo.hosts} == before
    assert all(row.state.startswith("up") for row in lab.lab.status())
