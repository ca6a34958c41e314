"""site.yml on the lab: keys born on hosts, policy enforced at both ends, live changes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO
from meshlab import KINDS, MeshLab, ping_losses, recap

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    lab = MeshLab(tmp_path_factory.mktemp("mesh"), "wgm")
    lab.lab.down()
    lab.lab.up()
    first = lab.playbook()
    lab.first_run = first
    lab.settle()
    yield lab
    lab.lab.down()


def test_cold_run_then_no_change(mesh):
    assert mesh.first_run.returncode == 0, mesh.first_run.stdout[-3000:]
    assert set(recap(mesh.first_run.stdout)) == {*mesh.mesh_nodes, "localhost"}
    again = mesh.playbook()
    assert again.returncode == 0, again.stdout[-3000:]
    assert {h: r["changed"] for h, r in recap(again.stdout).items()} == {
        h: 0 for h in [*mesh.mesh_nodes, "localhost"]}


def test_connectivity_equals_policy(mesh, capsys):
    queries, verdicts, results = mesh.connectivity()
    nodes = mesh.mesh_nodes
    lines = ["src -> dst".ljust(16) + " ".join(f"{p}/{n or ''}".ljust(9) for p, n in KINDS)]
    for s in nodes:
        for d in nodes:
            if s == d:
                continue
            cells = [("open" if results[s][f"{d}/{proto}/{port}"] else "-").ljust(9)
                     for proto, port in KINDS]
            lines.append(f"{s} -> {d}".ljust(16) + " ".join(cells))
    allowed = sum(v["allow"] for v in verdicts)
    with capsys.disabled():
        print("\nconnectivity (probe results; every cell equals wgmesh eval):")
        print("\n".join(lines))
        print(f"{len(queries)} probes: {allowed} allowed, {len(queries) - allowed} denied")
    assert 0 < allowed < len(queries)
    mismatches = mesh.mismatches(queries, verdicts, results)
    assert not mismatches, "\n".join(mismatches)


def test_both_ends_enforce(mesh):
    pub1 = mesh.plan()["hosts"]["pub1"]["addresses"][0]
    listeners = mesh.start_listeners({"pub1": pub1})
    probe = [("x", pub1, "tcp", 5432)]  # alice (home1) may reach pub1 on 80/443, not 5432
    try:
        assert mesh.probe("home1", [("y", pub1, "tcp", 443)]) == {"y": True}
        # Source filter removed by hand: the destination still drops, and counts it.
        before = mesh.counter("pub1", "dropped_in")
        mesh.run("home1", "nft", "flush", "chain", "inet", "wgmesh", "output")
        assert mesh.probe("home1", probe) == {"x": False}
        assert mesh.counter("pub1", "dropped_in") > before
        mesh.run("home1", "nft", "-f", "/etc/wgmesh/nftables.nft")
        # Destination filter removed by hand: the source refuses to send, and counts it.
        before = mesh.counter("home1", "dropped_out")
        mesh.run("pub1", "nft", "flush", "chain", "inet", "wgmesh", "input")
        assert mesh.probe("home1", probe) == {"x": False}
        assert mesh.counter("home1", "dropped_out") > before
        mesh.run("pub1", "nft", "-f", "/etc/wgmesh/nftables.nft")
    finally:
        for p in listeners:
            mesh.stop(p)


def test_peers_are_need_to_know(mesh):
    plan = mesh.plan()
    for node in mesh.mesh_nodes:
        running = set(mesh.run(node, "wg", "show", "wg0", "peers").stdout.split())
        compiled = {p["public_key"] for p in plan["hosts"][node]["peers"]}
        assert running == compiled, node
    # cafe1 may talk to home1 (through the relay) and pub2 only, so it knows no one else (a
    # host with no allowed peer at all has none: see the deny-all test) but the lighthouses
    # it asks how its NAT maps it, whose filters and its own pass only the agent port.
    cafe1 = {p["name"]: p["roles"] for p in plan["hosts"]["cafe1"]["peers"]}
    assert sorted(cafe1) == ["home1", "pub1", "pub2"]
    assert "lighthouse" in cafe1["pub1"] and "lighthouse" in cafe1["pub2"]


def test_no_private_key_reaches_the_controller(mesh):
    verbose = mesh.playbook("-vvv")
    assert verbose.returncode == 0, verbose.stdout[-2000:]
    keys = {n: mesh.run(n, "cat", "/etc/wireguard/wg0.key").stdout.strip()
            for n in mesh.mesh_nodes}
    assert all(len(k) == 44 for k in keys.values())
    haystacks = {"the -vvv run's output": verbose.stdout + verbose.stderr,
                 "the lockfile": (mesh.lab.dir / "mesh.lock.yml").read_text()}
    for node, key in keys.items():
        for where, text in haystacks.items():
            assert key not in text, f"{node}'s private key is in {where}"
        # Every file of the repository (and its venv) and Ansible's local state.
        for root in (REPO, Path.home() / ".ansible"):
            found = subprocess.run(["grep", "-rlF", "--", key, str(root)],
                                   capture_output=True, text=True)
            assert found.stdout == "", f"{node}'s private key is in {found.stdout}"
    # Nothing is cached on disk between runs: facts are not cached at all.
    assert "fact_caching" not in (REPO / "ansible.cfg").read_text()


def test_deny_all_never_cuts_management(mesh, tmp_path):
    deny = tmp_path / "deny.hujson"
    deny.write_text('{"tagOwners": {"tag:web": [], "tag:db": [], "tag:router": []}, '
                    '"acls": []}')
    try:
        run = mesh.playbook("-e", f"wgmesh_policy_file={deny}")
        assert run.returncode == 0, run.stdout[-2000:]
        for node in mesh.mesh_nodes:
            assert mesh.run(node, "wg", "show", "wg0", "peers").stdout.strip() == ""
        ping = mesh.ansible("wgmesh", "-m", "ansible.builtin.ping")
        assert ping.returncode == 0 and ping.stdout.count("SUCCESS") == len(mesh.mesh_nodes)
    finally:
        restore = mesh.playbook()
        assert restore.returncode == 0, restore.stdout[-2000:]


def test_policy_change_applies_live_without_dropping_packets(mesh, tmp_path):
    plan = mesh.plan()
    pub2 = plan["hosts"]["pub2"]["addresses"][0]
    policy = (REPO / "policies/lab.hujson").read_text()
    changed = policy.replace(  # removes alice -> bob:8080, adds carol -> web:443
        '{"action": "accept", "src": ["alice@example.com"], "proto": "tcp", '
        '"dst": ["bob@example.com:8080"]},',
        '{"action": "accept", "src": ["carol@example.com"], "dst": ["tag:web:443"]},')
    old_tests = ('"home2:8080"]', '"deny": ["tag:web:443", "legacy:22"]}')
    assert all(t in changed for t in old_tests)
    changed = changed.replace(old_tests[0], '"tag:web:443"]').replace(
        old_tests[1], '"deny": ["home2:8080", "legacy:22"]}')
    assert changed != policy
    new = tmp_path / "changed.hujson"
    new.write_text(changed)
    # pub1 (tag:web) pings pub2 (tag:db) every 20 ms while the change is applied everywhere.
    ping = mesh.record("pub1", ["ping", "-i", "0.02", "-w", "25", pub2])
    try:
        time.sleep(1)
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
        assert run.returncode == 0, run.stdout[-2000:]
        changes = recap(run.stdout)
        assert changes["cafe1"]["changed"] > 0 and changes["home1"]["changed"] > 0
        # alice -> bob:8080 was all that related home1 and home2: home2's name is gone.
        assert mesh.run("home1", "getent", "hosts", "home2", check=False).returncode != 0
        out = mesh.recorded(ping, timeout=40)
    finally:
        mesh.stop(ping)
        restore = mesh.playbook()
        assert restore.returncode == 0
    replies, lost = ping_losses(out)
    assert replies > 500 and not lost, (replies, lost)


def state_of(mesh) -> dict[str, str]:
    """What a run could change on each host: files, running peers, ruleset."""
    out = {}
    for node in mesh.mesh_nodes:
        out[node] = mesh.run(node, "sh", "-c", "cat /etc/wireguard/wg0.conf /etc/hosts "
                             "/etc/wgmesh/nftables.nft; wg show wg0 dump | cut -f1,4 | sort; "
                             "nft list table inet wgmesh | grep -v packets").stdout
    return out


def test_check_diff_shows_the_change_and_changes_nothing(mesh, tmp_path):
    policy = (REPO / "policies/lab.hujson").read_text().replace(
        '{"action": "accept", "src": ["group:ops"], "dst": ["tag:db:22"]},',
        '{"action": "accept", "src": ["group:ops"], "dst": ["tag:db:22", "tag:router:443"]},')
    new = tmp_path / "more.hujson"
    new.write_text(policy)
    before = state_of(mesh)
    run = mesh.playbook("--check", "--diff", "-e", f"wgmesh_policy_file={new}")
    assert run.returncode == 0, run.stdout[-3000:]
    assert state_of(mesh) == before
    out = run.stdout
    # cafe1 (carol, group:ops) gains pub3 (tag:router) as a peer, and pub3 lets her in on 443.
    assert "+# pub3 (direct" in out
    assert "+[Peer]" in out
    addr = {n: h["addresses"][0] for n, h in mesh.plan()["hosts"].items()}
    assert f"+            {addr['cafe1']} . tcp . 443," in out
    assert f"+{addr['pub3']}\tpub3 pub3.mesh.internal" in out
    changed = recap(out)
    assert changed["cafe1"]["changed"] > 0 and changed["pub2"]["changed"] == 0
    keys = [mesh.run(n, "cat", "/etc/wireguard/wg0.key").stdout.strip() for n in mesh.mesh_nodes]
    assert not any(k in out for k in keys)


def test_check_mode_on_a_bare_host_creates_nothing(tmp_path_factory):
    lab = MeshLab(tmp_path_factory.mktemp("bare"), "wgb")
    lab.lab.down()
    lab.lab.up()
    try:
        run = lab.playbook("--check", "--diff")
        assert run.returncode == 0, run.stdout[-3000:]
        for node in lab.mesh_nodes:
            files = lab.run(node, "ls", "-A", "/etc/wireguard").stdout
            assert files == "", (node, files)
            assert lab.run(node, "ip", "link", "show", "wg0", check=False).returncode != 0
        assert not (lab.lab.dir / "mesh.lock.yml").exists()
    finally:
        lab.lab.down()


def test_a_host_with_another_key_stops_the_run(mesh):
    lock = mesh.lab.dir / "mesh.lock.yml"
    original = lock.read_text()
    key_file = mesh.lab.host_dir("pub2") / "etc.upper/wireguard/wg0.key"
    saved = key_file.read_text()
    before = state_of(mesh)
    try:
        # pub2 "rebuilt": a new key on the host while the lockfile still pins the old one.
        mesh.run("pub2", "rm", "/etc/wireguard/wg0.key")
        run = mesh.playbook()
        assert run.returncode != 0
        assert "pub2: presents public key" in run.stdout
        assert "A host's key changes only by rotation" in run.stdout
        assert lock.read_text() == original  # the pin was not replaced
        after = state_of(mesh)
        assert {n: after[n] for n in after if n != "pub2"} == {
            n: before[n] for n in before if n != "pub2"}  # nothing was applied
    finally:
        mesh.run("pub2", "sh", "-c", "umask 077; cat > /etc/wireguard/wg0.key", stdin=saved)
        assert mesh.playbook().returncode == 0
