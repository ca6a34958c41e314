"""Faults during a run: every host ends on a good bundle, and the run names what failed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
from conftest import BIN, REPO, ansible_env
from meshlab import built_mesh, intended, policy_with, reboot, recap, running, snapshot, wrapped

pytestmark = pytest.mark.lab

CHANGE = ('"src": ["group:ops"], "dst": ["tag:db:22"]',
          '"src": ["group:ops", "alice@example.com"], "dst": ["tag:db:22"]')


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    yield from built_mesh(tmp_path_factory, "faults", "wgf")


def test_a_disk_that_refuses_writes_leaves_the_host_on_its_last_good_bundle(mesh, tmp_path):
    """home1's new bundle changes its wg-quick file and its ruleset; /etc/wgmesh refuses
    writes, so the ruleset cannot be written after the wg-quick file was: the host must
    end exactly as before, and the task must say why."""
    new = policy_with(mesh, tmp_path, *CHANGE)
    before = snapshot(mesh, "home1")
    mesh.run("home1", "mount", "--bind", "/etc/wgmesh", "/etc/wgmesh")
    mesh.run("home1", "mount", "-o", "remount,bind,ro", "/etc/wgmesh")
    try:
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    finally:
        mesh.run("home1", "umount", "/etc/wgmesh")
    back_then_applied(mesh, run, before, new, "Read-only file system")


def back_then_applied(mesh, run, before: dict, new, cause: str) -> None:
    """The run failed on home1 naming the cause, home1 is exactly as before it, and the next
    run applies the new bundle."""
    assert run.returncode != 0
    out = " ".join(run.stdout.split())
    assert cause in out and "returned to the last good bundle" in out, out[-3000:]
    assert recap(run.stdout)["home1"]["failed"] == 1
    assert snapshot(mesh, "home1") == before
    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert running(mesh, "home1") == intended(mesh, new)["home1"]
    assert mesh.playbook().returncode == 0


def test_an_unreachable_host_is_named_and_completed_by_the_next_run(mesh, tmp_path):
    new = policy_with(mesh, tmp_path, *CHANGE)
    want = intended(mesh, new)
    old_pub3 = running(mesh, "pub3")
    # pub3's SSH server refuses every connection (an outage, a host being rebooted).
    mesh.run("pub3", "nft", "-f", "-", stdin=(
        "table inet outage {\n chain in {\n type filter hook input priority -10;\n"
        " tcp dport 22 reject with tcp reset\n }\n}\n"))
    try:
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    finally:
        mesh.run("pub3", "nft", "delete", "table", "inet", "outage")
    assert run.returncode != 0
    counts = recap(run.stdout)
    assert counts["pub3"]["unreachable"] == 1, counts
    assert "fatal: [pub3]: UNREACHABLE!" in run.stdout
    for node in ("cafe1", "home1", "home2", "pub1", "pub2"):
        assert counts[node]["failed"] == 0 and running(mesh, node) == want[node], node
    assert running(mesh, "pub3") == old_pub3
    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert {n: running(mesh, n) for n in want} == want
    assert mesh.playbook().returncode == 0


def test_a_controller_killed_mid_run_converges_on_the_next_run(mesh, tmp_path):
    new = policy_with(mesh, tmp_path, *CHANGE)
    want = intended(mesh, new)
    argv = [str(BIN / "ansible-playbook"), "-i", str(mesh.inventory), "site.yml",
            "-e", f"wgmesh_policy_file={new}"]
    proc = subprocess.Popen(argv, cwd=REPO, env=ansible_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    # Killed while hosts apply: after the compile task has started.
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "Make the host run its bundle" in line or time.monotonic() > deadline:
            break
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ansible's workers run in sessions of their own and outlive the killed controller:
    # end them too (found by this test's own policy path on their command line).
    workers = subprocess.run(["pgrep", "-f", str(new)], capture_output=True, text=True)
    for pid in map(int, workers.stdout.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert {n: running(mesh, n) for n in want} == want
    status = mesh.wgmesh("status")  # against mesh.yml's own policy: every host differs
    assert status.returncode == 5  # drift
    assert mesh.playbook().returncode == 0
    assert mesh.wgmesh("status").returncode == 0


NFT_FAILS_ON_LOAD = """#!/bin/sh
# Injected fault: the check passes (nft -c), the new table is refused, as a kernel that lacks
# a feature it uses, or runs out of memory, would refuse it: both ways the apply loads it (the
# change in place, then the whole file) fail; the rollback's load, the third, passes.
if [ "$1" = -f ] && [ "$(cat /run/nft-once 2>/dev/null)" != 2 ]; then
  echo $(( $(cat /run/nft-once 2>/dev/null || echo 0) + 1 )) > /run/nft-once
  echo "injected: ruleset refused by the kernel" >&2; exit 1
fi
exec /run/nft.real "$@"
"""

SSH_CUT = """#!/bin/sh
# Injected fault: when the run first writes peers (`wg set ... allowed-ips`), every SSH
# session on this host is cut (the connection Ansible's task runs through: the session and
# its privileged monitor, which both hold the socket), then the command goes on.
if [ "$1" = set ] && [ ! -e /run/wg-once ] && echo " $* " | grep -q " allowed-ips "; then
  touch /run/wg-once
  pkill -KILL -f '^sshd: root' || true
  sleep 0.5
fi
exec /run/wg.real "$@"
"""


def test_a_ruleset_the_kernel_refuses_leaves_the_host_on_its_last_good_bundle(mesh, tmp_path):
    new = policy_with(mesh, tmp_path, *CHANGE)
    before = snapshot(mesh, "home1")
    with wrapped(mesh, "home1", "nft", NFT_FAILS_ON_LOAD):
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    back_then_applied(mesh, run, before, new, "injected: ruleset refused by the kernel")


def test_a_reboot_after_a_failed_apply_brings_up_the_last_good_bundle(mesh, tmp_path):
    """The new table is written, then refused: the rollback writes the last good one back,
    so the boot after it loads that one, never the table of the bundle that failed."""
    new = policy_with(mesh, tmp_path, *CHANGE)
    before = snapshot(mesh, "home1")
    with wrapped(mesh, "home1", "nft", NFT_FAILS_ON_LOAD):
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert run.returncode != 0 and recap(run.stdout)["home1"]["failed"] == 1
    booted = reboot(mesh, ["home1"])["home1"]
    assert booted.returncode == 0, booted.stderr[-1500:]
    after = snapshot(mesh, "home1")
    assert {k: after[k] for k in ("files", "table", "hash")} == {
        k: before[k] for k in ("files", "table", "hash")}
    mesh.settle()
    assert mesh.playbook().returncode == 0


def test_an_ssh_connection_cut_mid_apply_leaves_a_whole_bundle(mesh, tmp_path):
    """The connection drops while home2 applies (it gains pub2 as a peer): the apply
    finishes on the host (it is one transaction that does not depend on the connection), the
    run names the host, and the host runs either bundle whole, never a mix; the next run
    converges."""
    new = policy_with(mesh, tmp_path, CHANGE[0],
                      '"src": ["group:ops", "bob@example.com"], "dst": ["tag:db:22"]')
    before = snapshot(mesh, "home2")
    with wrapped(mesh, "home2", "wg", SSH_CUT):
        run = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert run.returncode != 0
    counts = recap(run.stdout)["home2"]
    assert counts["unreachable"] + counts["failed"] == 1, counts
    # Whole: either the old bundle, or the new one with files, table, peers and record
    # agreeing (a check-mode apply of the new bundle then finds nothing to change).
    after = snapshot(mesh, "home2")
    if after != before:
        assert after["hash"] == intended(mesh, new)["home2"]
        check = mesh.playbook("--check", "-l", "home2,localhost",
                              "-e", f"wgmesh_policy_file={new}")
        assert check.returncode == 0 and recap(check.stdout)["home2"]["changed"] == 0, \
            check.stdout[-3000:]
    again = mesh.playbook("-e", f"wgmesh_policy_file={new}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert running(mesh, "home2") == intended(mesh, new)["home2"]
    assert mesh.playbook().returncode == 0
