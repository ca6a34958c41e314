"""The wgmesh command's contract: exit codes and error format."""

import subprocess
import sys
from pathlib import Path

WGMESH = str(Path(sys.executable).parent / "wgmesh")


def test_bad_topology_exits_2_with_file_line_column(tmp_path):
    bad = tmp_path / "topology.yml"
    bad.write_text("name: x\nsegments: {}\nhosts:\n  h1: {interfaces: {nowhere: 192.0.2.1}}\n")
    out = subprocess.run([WGMESH, "lab", "status", "-i", str(bad)], capture_output=True,
                         text=True)
    assert out.returncode == 2
    assert out.stderr == (f'error: {bad}:4:21: hosts.h1.interfaces.nowhere: unknown key '
                          '"nowhere" (none are defined)\n')


def test_usage_error_exits_2():
    out = subprocess.run([WGMESH, "lab", "sideways"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
