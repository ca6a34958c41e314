"""Up and down are idempotent and leave the machine exactly as they found it."""

import subprocess
from pathlib import Path

import pytest
from conftest import REPO, LabSession, copy_topology
from rootstate import root_snapshot

pytestmark = pytest.mark.lab


def lab_processes(state_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(state_dir) in cmd:
                found.append(f"{proc.name}: {cmd}")
    return found


def test_up_then_down_leaves_root_namespace_byte_identical(tmp_path):
    session = LabSession(copy_topology(tmp_path, REPO / "inventories/lab/topology.yml", "wgc"))
    lab = session.lab
    lab.down()
    before = root_snapshot()
    lab.up()
    pids = {h: lab.init_pid(h) for h in lab.topo.hosts}
    assert all(pids.values())
    lab.up()  # idempotent: nothing is recreated
    assert {h: lab.init_pid(h) for h in lab.topo.hosts} == pids
    assert lab_processes(lab.dir)

    lab.down()
    lab.down()  # idempotent: nothing left to remove is not an error
    after = root_snapshot()
    for key in before:
        assert after[key] == before[key], key
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in netns.split() if n.startswith(f"{lab.topo.name}-")]
    assert not lab_processes(lab.dir)
    assert not lab.dir.exists()
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()

