"""Fixtures for tests that run on a real lab: namespaces, sshd, Ansible over SSH.

Tests bring up their own copy of a lab topology under another lab name, so a lab a developer
left up (``./dev.sh demo``) is neither used nor disturbed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wgmesh.lab.runtime import Lab
from wgmesh.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PY = "/usr/bin/python3"  # the hosts' Python; the controller's venv is not visible inside


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="lab tests need root (namespaces, mounts)")
        for item in items:
            if "lab" in item.keywords:
                item.add_marker(skip)


def copy_topology(tmp_dir: Path, source: Path, name: str) -> Path:
    """The topology file under a different lab name (and so different namespaces)."""
    text = source.read_text()
    original = load_topology(source).name
    text = text.replace(f"\nname: {original}\n", f"\nname: {name}\n", 1)
    out = tmp_dir / "topology.yml"
    out.write_text(text)
    return out


class LabSession:
    """A running lab and the ways tests drive it."""

    def __init__(self, topology_file: Path):
        self.topology_file = topology_file
        self.lab = Lab(load_topology(topology_file))
        self.topo = self.lab.topo

    def run(self, node: str, *cmd: str, timeout: float = 20, check: bool = True,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.lab.exec_argv(node, list(cmd)), capture_output=True,
                              text=True, timeout=timeout, check=check, input=stdin)

    def python(self, node: str, code: str, **kw) -> subprocess.CompletedProcess:
        return self.run(node, PY, "-c", code, **kw)

    def spawn(self, node: str, code: str, *args: str) -> subprocess.Popen:
        """A Python program running in the background on a lab host (a listener)."""
        return self.start(node, [PY, "-u", "-c", code, *args])

    def start(self, node: str, argv: list[str]) -> subprocess.Popen:
        """A command in the background on a lab node, in a process group of its own: nsenter
        forks into the host's PID namespace, and stop() must end the child too."""
        return subprocess.Popen(self.lab.exec_argv(node, argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def record(self, node: str, argv: list[str]) -> subprocess.Popen:
        """A probe in the background (ping, a stream) whose output, stdout and stderr, goes to
        a file; ``recorded`` waits for it and returns that output. Not a pipe, as ``start``
        gives: a pipe that no one reads while a playbook runs fills at 64 KiB (some 800 lines
        of `ping -D`) and stops the probe in its next write, pausing it in the very run it
        watches."""
        out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by recorded)
        proc = subprocess.Popen(self.lab.exec_argv(node, argv), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        proc.record = out
        return proc

    @staticmethod
    def recorded(proc: subprocess.Popen, timeout: float) -> str:
        """The output of a ``record`` probe, once it has ended."""
        proc.wait(timeout=timeout)
        proc.record.seek(0)
        text = proc.record.read()
        proc.record.close()
        return text

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def ansible(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible"), "-i", str(self.topology_file), *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ansible_env())


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PATH=f"{BIN}:{env['PATH']}",
               ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_NOCOLOR="1")
    return env


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> LabSession:
    tmp = tmp_path_factory.mktemp("lab")
    session = LabSession(copy_topology(tmp, REPO / "inventories/lab/topology.yml", "wgt"))
    session.lab.down()  # whatever an interrupted earlier run left
    session.lab.up()
    yield session
    session.lab.down()
