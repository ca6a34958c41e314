"""A host's boot: every wgmesh interface loads the host's table before it can carry a packet,
or stays down and says why (docs/security.md, the boot invariant). A reboot is simulated
(meshlab.REBOOT): the ruleset, interfaces and rules are lost, the files stay, and each
interface comes up as wg-quick@ brings it up at boot."""

from __future__ import annotations

import re
import time

import pytest
from meshlab import built_mesh, reboot

pytestmark = pytest.mark.lab

RULESET = "/etc/wgmesh/nftables.nft"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "boot", "wgr")


def tables(mesh, node: str) -> str:
    return mesh.run(node, "nft", "list", "tables").stdout


def test_every_host_rebooted_at_once_comes_up_filtered_and_in_sync(mesh):
    booted = reboot(mesh, mesh.mesh_nodes)
    assert {n: p.returncode for n, p in booted.items()} == dict.fromkeys(mesh.mesh_nodes, 0), \
        {n: p.stderr[-1500:] for n, p in booted.items() if p.returncode}
    for node in mesh.mesh_nodes:
        assert "table inet wgmesh" in tables(mesh, node), node
    mesh.settle()
    # A relayed pair has no keepalive: its first packet after the reboot makes the handshake
    # through two fresh hop tunnels, which can take longer than status's one 2-second ping.
    mesh.run("home1", "ping", "-c", "3", "-W", "5", mesh.mesh_address("branch1"), check=False,
             timeout=30)
    # The loaded tables, peers, keys and routes are the bundles' own, with no Ansible run.
    status = mesh.wgmesh("status")
    assert status.returncode == 0, status.stdout[-3000:]
    assert status.stdout.count("- in sync") == len(mesh.mesh_nodes), status.stdout[-3000:]
    # What the policy denies stays refused, and what it allows flows again.
    queries, verdicts, results = mesh.connectivity()
    assert results["pub2"]["pub1/icmp/None"] is False  # denied by the policy
    assert results["home1"]["pub1/tcp/443"] is True  # allowed
    mismatches = mesh.mismatches(queries, verdicts, results)
    assert not mismatches, "\n".join(mismatches)


def router_solicitations(mesh, node: str) -> int:
    """How many router solicitations the host's kernel has sent (any interface)."""
    text = mesh.run(node, "cat", "/proc/net/snmp6").stdout
    return int(re.search(r"^Icmp6OutRouterSolicits\s+(\d+)", text, re.M).group(1))


def test_an_idle_host_counts_no_drop_though_its_kernel_solicits_routers(mesh):
    """After a boot the kernel sends router solicitations and listener reports from wg0's
    link-local address; the table drops them without counting them as refused by policy,
    so an idle host's drop counters stay at 0 (docs/nftables.md)."""
    sent = router_solicitations(mesh, "home1")
    reboot(mesh, ["home1"])
    # The first solicitation after a boot came 20-25 s after it on the lab (2026-12-07).
    deadline = time.monotonic() + 60
    while router_solicitations(mesh, "home1") == sent and time.monotonic() < deadline:
        time.sleep(1)
    assert router_solicitations(mesh, "home1") > sent
    for name in ("dropped_in", "dropped_out", "dropped_fwd"):
        assert mesh.counter("home1", name) == 0, name


@pytest.mark.parametrize(("damage", "reason"), [
    (f"rm {RULESET}", "No such file or directory"),
    (f"echo 'table inet wgmesh {{ chain input {{ accept' > {RULESET}", "syntax error"),
])
def test_an_interface_whose_table_cannot_load_stays_down_and_says_why(mesh, damage, reason):
    """pub1 is a relay, so both of its interfaces (wg0 and wg0-hop) come up at boot."""
    mesh.run("pub1", "cp", "-p", RULESET, "/root/nftables.nft.good")
    try:
        mesh.run("pub1", "sh", "-c", damage)
        booted = reboot(mesh, ["pub1"])["pub1"]
        assert booted.returncode != 0
        for iface in ("wg0-hop", "wg0"):
            assert (f"wgmesh: {iface} stays down: its filter {RULESET} did not load"
                    in booted.stderr), booted.stderr
            assert mesh.run("pub1", "ip", "link", "show", "dev", iface,
                            check=False).returncode != 0, iface
        assert reason in booted.stderr, booted.stderr
        assert tables(mesh, "pub1") == ""
    finally:
        mesh.run("pub1", "mv", "/root/nftables.nft.good", RULESET)
    booted = reboot(mesh, ["pub1"])["pub1"]
    assert booted.returncode == 0, booted.stderr[-1500:]
    # pub1 alone: its peers behind NAT still hold sessions from before its reboot, and
    # WireGuard renews them only when they next send data (docs/reliability.md).
    status = mesh.wgmesh("status", "-l", "pub1")
    assert status.returncode == 0 and "- in sync" in status.stdout, status.stdout[-3000:]
