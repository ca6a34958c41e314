"""The apply side on a real lab: one bundle per host, compared with the live state and
applied in one step. Drift, key rotation, leaving, batches and rollback."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from meshlab import (
    built_mesh,
    check_untouched_flow,
    echoes,
    lockfile,
    path_counters,
    policy_with,
    recap,
    snapshot,
    traced,
    wrapped,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "apply", "wga")


def test_a_no_change_run_is_one_module_call_per_host_and_changes_nothing(mesh):
    run = mesh.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    counts = recap(run.stdout)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    # On a mesh host, two modules run: the key (which also finds missing tools) and the
    # apply. Argument checks run on the controller, and the compile once for all.
    ran = {}
    for block in run.stdout.split("TASK [")[1:]:
        name = block.split("]", 1)[0]
        for host in re.findall(r"^(?:ok|changed): \[(\w+)", block, re.M):
            ran.setdefault(host, []).append(name.removeprefix("wgmesh : "))
    remote = [t for t in ran["home1"] if not t.startswith(("Validating", "Check the role"))]
    assert remote == ["Make the host's WireGuard key (it never leaves the host); find the tools "
                      "it lacks",
                      "Make the host run its bundle (compared with the live state; all or "
                      "nothing)"], ran["home1"]


def test_drift_is_found_reported_in_words_and_repaired(mesh):
    # A peer with an endpoint: once it is back, pub2 can reach it at once (a peer behind NAT
    # is reachable again only after its next keepalive, up to 25 s later).
    peer = next(p for p in mesh.plan()["hosts"]["pub2"]["peers"] if p["endpoint"])
    mesh.run("pub2", "nft", "add", "element", "inet", "wgmesh", "in4",
             "{ 100.64.0.99 . tcp . 22 }")
    mesh.run("pub2", "wg", "set", "wg0", "peer", peer["public_key"], "remove")
    mesh.python("pub2", "t = open('/etc/hosts').read()\n"
                "open('/etc/hosts', 'w').write(t.replace('\\tpub1 ', '\\tevil ', 1))")
    hand_made = mesh.run("pub2", "nft", "list", "set", "inet", "wgmesh", "in4").stdout
    assert "100.64.0.99" in hand_made

    check = mesh.playbook("--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    counts = recap(check.stdout)
    assert counts["pub2"]["changed"] == 1
    assert all(c["changed"] == 0 for h, c in counts.items() if h != "pub2"), counts
    out = " ".join(check.stdout.split())
    assert 'set in4 has 1 element(s) not in the bundle: {"concat":["100.64.0.99","tcp",22]}' in out
    assert f"wg0 peers: +{peer['name']}" in out
    assert "write the mesh names in /etc/hosts" in out
    assert mesh.run("pub2", "nft", "list", "set", "inet", "wgmesh", "in4").stdout == hand_made

    status = mesh.wgmesh("status")  # runs playbooks/status.yml
    assert status.returncode == 5 and "DIFFERS" in status.stdout  # drift
    assert "pub2 does not run what the inputs say" in status.stdout

    fix = mesh.playbook()
    assert fix.returncode == 0, fix.stdout[-3000:]
    assert recap(fix.stdout)["pub2"]["changed"] == 1
    assert "100.64.0.99" not in mesh.run("pub2", "nft", "list", "set", "inet", "wgmesh",
                                         "in4").stdout
    assert peer["public_key"] in mesh.run("pub2", "wg", "show", "wg0", "peers").stdout
    assert "\tevil " not in mesh.run("pub2", "cat", "/etc/hosts").stdout
    assert mesh.wgmesh("status").returncode == 0
    again = recap(mesh.playbook().stdout)
    assert all(c["changed"] == 0 for c in again.values()), again


def test_a_running_key_that_differs_from_the_key_file_is_noticed_and_loaded(mesh):
    other = mesh.run("home2", "wg", "genkey").stdout.strip()
    mesh.run("home2", "sh", "-c", "umask 077; cat > /run/other.key", stdin=other + "\n")
    mesh.run("home2", "wg", "set", "wg0", "private-key", "/run/other.key")
    mesh.run("home2", "rm", "/run/other.key")
    run = mesh.playbook("--diff")
    assert run.returncode == 0, run.stdout[-3000:]
    assert recap(run.stdout)["home2"]["changed"] == 1
    assert "the key file holds" in run.stdout
    pinned = re.search(r"home2:\n(?:    .*\n)*?    public_key: (\S+)",
                       lockfile(mesh).read_text()).group(1)
    assert mesh.run("home2", "wg", "show", "wg0", "public-key").stdout.strip() == pinned


def test_rotation_gives_every_peer_the_new_key_and_drops_no_other_flow(mesh):
    lock = lockfile(mesh)

    def pinned(text):
        return re.search(r"home2:\n(?:    .*\n)*?    public_key: (\S+)", text).group(1)

    old = pinned(lock.read_text())
    pub1, pub2 = mesh.mesh_address("pub1"), mesh.mesh_address("pub2")
    # pub1 (tag:web) -> pub2 (tag:db) does not involve home2: it must lose nothing.
    before = path_counters(mesh, ("pub1", "pub2"))
    with traced(mesh, ("pub1", "pub2"), echoes(pub1, pub2)) as traces:
        pings = mesh.record("pub1", ["ping", "-D", "-i", "0.01", "-w", "15", pub2])
        time.sleep(1)
        started = time.time()
        run = mesh.playbook("-l", "home2", play="playbooks/rotate.yml")
        out = mesh.recorded(pings, timeout=30)
    assert run.returncode == 0, run.stdout[-3000:]
    # Not one lost: the table changes in place (docs/nftables.md). A loss fails with the
    # counters that say where it died and the lost echo's trace through both hosts' hooks.
    check_untouched_flow(out, started,
                         counters=(before, path_counters(mesh, ("pub1", "pub2"))),
                         traces=traces)
    new = pinned(lock.read_text())
    assert new != old
    assert mesh.run("home2", "wg", "show", "wg0", "public-key").stdout.strip() == new
    for node in ("home1", "pub1"):  # home2's peers, outside the limit
        assert new in mesh.run(node, "wg", "show", "wg0", "peers").stdout
        assert old not in mesh.run(node, "wg", "show", "wg0", "peers").stdout
    # home2's own flows come back within a handshake (5 s retry).
    assert mesh.run("home2", "ping", "-c1", "-w", "12", pub1, timeout=20).returncode == 0
    assert all(c["changed"] == 0 for c in recap(mesh.playbook().stdout).values())


WG_FAILS_ONCE = """#!/bin/sh
# Injected fault: the first `wg set` that writes peers fails, as a refused configuration
# would.
if [ "$1" = set ] && [ ! -e /run/wg-once ] && echo " $* " | grep -q " allowed-ips "; then
  touch /run/wg-once; echo "injected failure" >&2; exit 1
fi
exec /run/wg.real "$@"
"""


def test_a_failed_apply_returns_the_host_to_its_last_good_bundle(mesh, tmp_path):
    """home2 gets a new peer (pub2) and new set elements; its `wg set` of peers fails after
    the new table has loaded. The host must end exactly as before the run, the task must name
    the cause, and the next run must apply the new bundle."""
    new = policy_with(mesh, tmp_path, '"src": ["group:ops"], "dst": ["tag:db:22"]',
                      '"src": ["group:ops", "bob@example.com"], "dst": ["tag:db:22"]')
    before = snapshot(mesh, "home2")
    with wrapped(mesh, "home2", "wg", WG_FAILS_ONCE):
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert run.returncode != 0
    out = " ".join(run.stdout.split())
    assert "injected failure" in out and "returned to the last good bundle" in out, out[-3000:]
    assert recap(run.stdout)["home2"]["failed"] == 1
    assert snapshot(mesh, "home2") == before

    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    after = snapshot(mesh, "home2")
    assert after["hash"] != before["hash"] and after["peers"] != before["peers"]
    assert mesh.playbook().returncode == 0
    assert snapshot(mesh, "home2") == before  # the original policy, back again


def test_a_broken_mesh_is_the_meshs_error_before_any_host_is_touched(mesh, tmp_path):
    broken = policy_with(mesh, tmp_path, '"deny": ["tag:db:22"]', '"deny": ["tag:db:5432"]')
    start = time.time()
    run = mesh.playbook("-e", f"wgmesh_policy_file={broken}")
    took = time.time() - start
    assert run.returncode != 0
    counts = recap(run.stdout)
    assert counts["localhost"]["failed"] == 1 and set(counts) == {"localhost"}, counts
    assert "the policy's tests fail (no host was changed)" in run.stdout
    assert "test failed: pub1 -> pub2:5432 is allowed (by acls[2]), expected deny" in run.stdout
    assert "TASK [wgmesh :" not in run.stdout
    assert took < 15, took


def test_batches_limit_and_tags(mesh):
    run = mesh.playbook("-e", "wgmesh_serial=2")
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.count("TASK [wgmesh : Compile the mesh once for this batch") == 4
    assert all(c["changed"] == 0 for c in recap(run.stdout).values())

    limited = mesh.playbook("-l", "home1")
    assert limited.returncode == 0, limited.stdout[-3000:]
    assert ("--limit leaves 6 host(s) of the mesh out of this run: branch1, cafe1, home2, pub1, "
            "pub2, pub3" in " ".join((limited.stdout + limited.stderr).split()))

    tags = mesh.playbook("--list-tags").stdout
    for tag in ("wgmesh_keys", "wgmesh_apply", "wgmesh_packages"):
        assert tag in tags
    keys_only = mesh.playbook("--tags", "wgmesh_keys")
    assert keys_only.returncode == 0, keys_only.stdout[-3000:]
    assert "Compile the mesh once" in keys_only.stdout
    assert "Make the host run its bundle" not in keys_only.stdout


def test_expired_and_removed_nodes_leave_their_hosts_clean(mesh):
    mesh_file = mesh.inventory / "mesh.yml"
    original = mesh_file.read_text()
    gone = ("ip link show wg0 2>/dev/null; nft list table inet wgmesh 2>/dev/null; "
            "find /etc/wireguard /etc/wgmesh /var/lib/wgmesh /var/lib/prometheus -type f "
            "2>/dev/null; "
            "grep wgmesh /etc/hosts; true")
    try:
        # pub3 expired yesterday; pub2 left mesh.yml (its host stays in the inventory);
        # home1 expires in five days (a warning, once).
        soon = (dt.date.today() + dt.timedelta(days=5)).isoformat()
        text = original.replace("  pub3:\n", "  pub3:\n    expires: 2020-01-01\n", 1)
        text = text.replace("  home1:\n", f"  home1:\n    expires: {soon}\n", 1)
        text = re.sub(r"\n  pub2:\n(?:    .*\n)+", "\n", text, count=1)
        assert "pub2:" not in text and "expires: 2020-01-01" in text
        mesh_file.write_text(text)
        run = mesh.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        out = " ".join((run.stdout + run.stderr).split())
        assert "pub3 has expired (2020-01-01): the run takes it out of the mesh" in out
        assert out.count(f"home1 expires on {soon} and then leaves the mesh") == 1
        for node in ("pub2", "pub3"):
            assert mesh.run(node, "sh", "-c", gone).stdout.strip() == "", node
        keys = mesh.run("pub1", "wg", "show", "wg0", "dump").stdout
        assert len(keys.splitlines()) >= 2  # pub1 still has peers, none of them the leavers
        plan = mesh.plan()
        assert "pub3" not in plan["hosts"] and "pub2" not in plan["hosts"]
        again = recap(mesh.playbook().stdout)
        assert all(c["changed"] == 0 for c in again.values()), again
    finally:
        mesh_file.write_text(original)
    # Coming back: pub2 gets a new key pinned; pub3's old pin is replaced by rotation.
    back = mesh.playbook("-e", '{"wgmesh_rotate": ["pub3"]}')
    assert back.returncode == 0, back.stdout[-3000:]
    assert mesh.playbook(play="playbooks/status.yml").returncode == 0


def test_a_join_and_a_leave_in_one_run_drop_no_packet_of_other_flows(mesh):
    """cafe1 joins from a bare host while pub3 (the subnet router) leaves, in one run;
    pub1 -> pub2 (neither changes access) keeps every packet, and both changes take effect."""
    mesh_file = mesh.inventory / "mesh.yml"
    original = mesh_file.read_text()
    without = {n: re.sub(rf"\n  {n}:\n(?:    .*\n)+", "\n", original, count=1)
               for n in ("cafe1", "pub3")}
    pub1, pub2 = mesh.mesh_address("pub1"), mesh.mesh_address("pub2")
    pub3 = mesh.mesh_address("pub3")
    no_wg0 = ("pub3", "sh", "-c", "ip link show wg0 2>&1; true")
    try:
        mesh_file.write_text(without["cafe1"])  # cafe1 leaves first: a bare host after
        assert mesh.playbook().returncode == 0
        assert "does not exist" in mesh.run("cafe1", *no_wg0[1:]).stdout
        mesh_file.write_text(without["pub3"])
        before = path_counters(mesh, ("pub1", "pub2"))
        with traced(mesh, ("pub1", "pub2"), echoes(pub1, pub2)) as traces:
            pings = mesh.record("pub1", ["ping", "-D", "-i", "0.01", "-w", "25", pub2])
            time.sleep(1)
            started = time.time()
            run = mesh.playbook()
            out = mesh.recorded(pings, timeout=40)
        assert run.returncode == 0, run.stdout[-3000:]
        check_untouched_flow(out, started,  # as in the rotation test
                             counters=(before, path_counters(mesh, ("pub1", "pub2"))),
                             traces=traces)
        # carol (ops) reaches tag:db again; pub3 is gone from its peers' tables.
        assert mesh.run("cafe1", "ping", "-c1", "-w", "12", pub2, timeout=20).returncode == 0
        assert pub3 not in mesh.run("pub1", "wg", "show", "wg0", "allowed-ips").stdout
        assert "does not exist" in mesh.run(*no_wg0).stdout
    finally:
        # Back to the lab's mesh even when an assertion failed, so the next tests start
        # from it (and fail, if they do, for their own reason).
        mesh_file.write_text(original)
        back = mesh.playbook()
    assert back.returncode == 0, back.stdout[-3000:]
    assert mesh.run("home1", "ping", "-c1", "-w", "12", pub1, timeout=20).returncode == 0


def test_a_failed_canary_returns_its_batch_and_stops_the_run(mesh, tmp_path):
    """A policy change applied in batches of three with the canary on. cafe1 and home1 (the
    first batch, with branch1) reach each other through the relay pub1; a fault outside wgmesh drops
    cafe1's packets to the relay, so cafe1's ping to home1, which the policy allows, goes
    unanswered: the batch returns to its previous bundles and no later batch is touched."""
    new = policy_with(mesh, tmp_path, '"src": ["group:ops"], "dst": ["tag:db:22"]',
                      '"src": ["group:ops", "alice@example.com"], "dst": ["tag:db:22"]')
    before = {n: snapshot(mesh, n) for n in mesh.mesh_nodes}
    pub1 = str(mesh.topo.hosts["pub1"].address)
    fault = (f"table inet fault {{\n chain out {{\n type filter hook output priority -10;\n"
             f" ip daddr {pub1} udp dport 51821 drop\n }}\n}}\n")
    mesh.run("cafe1", "nft", "-f", "-", stdin=fault)
    try:
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}", "-e", "wgmesh_serial=3",
                            "-e", "wgmesh_canary=true")
    finally:
        mesh.run("cafe1", "nft", "delete", "table", "inet", "fault")
    assert run.returncode != 0
    out = " ".join(run.stdout.split())
    assert ("Canary failed, the batch (branch1, cafe1, home1) is back on its previous bundles"
            in out)
    assert "cafe1: ping home1: no answer, policy allows" in out
    # home1's bundle changed with the policy, and is back; later batches never ran.
    assert snapshot(mesh, "home1") == before["home1"]
    for node in ("home2", "pub1", "pub2", "pub3"):
        assert snapshot(mesh, node) == before[node], node
    assert "TASK [wgmesh : Make the host's WireGuard key" in run.stdout
    assert "home2" not in recap(run.stdout)

    ok = mesh.playbook("-e", f"wgmesh_policy_file={new}", "-e", "wgmesh_serial=3",
                       "-e", "wgmesh_canary=true")
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert snapshot(mesh, "home1")["hash"] != before["home1"]["hash"]
    assert mesh.playbook().returncode == 0
