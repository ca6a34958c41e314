"""The README's lab commands as it shows them (tests/docmd.py): `./dev.sh demo` brings the
default lab up and runs site.yml on it; then the lab's own commands and the day-to-day
block (HOST is a lab host), each with the exit code the README claims; the lab goes down
as the demo says."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import BIN, REPO
from docmd import block
from meshlab import recap

pytestmark = pytest.mark.lab

BLOCKS = ("README.md: ./dev.sh demo", "README.md: .venv/bin/wgmesh lab status",
          "README.md: ansible-playbook site.yml --check --diff")


def test_the_readmes_lab_commands_run_as_shown():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", ANSIBLE_NOCOLOR="1")
    said = {}
    try:
        for key in BLOCKS:
            for cmd in block(key).commands:
                text = cmd.text.replace("HOST", "pub2")
                run = subprocess.run(["bash", "-c", text], cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=1200)
                assert run.returncode == cmd.exit, \
                    f"{cmd}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
                said[text] = run.stdout
    finally:
        subprocess.run([str(BIN / "wgmesh"), "lab", "down"], cwd=REPO, env=env,
                       capture_output=True)
    demo = said["./dev.sh demo"]
    assert recap(demo) and all(r["failed"] == r["unreachable"] == 0
                               for r in recap(demo).values()), demo[-3000:]
    assert "home1 -> branch1 (" in demo and "  refused by: nothing, it passes" in demo, \
        demo[-3000:]
    assert "pub1" in said[".venv/bin/wgmesh lab status"]
    assert "peer: " in said[".venv/bin/wgmesh lab exec pub1 -- wg show"]
    batches = recap(said["ansible-playbook site.yml -e wgmesh_serial=2"])
    assert batches and all(r["failed"] == 0 for r in batches.values())


def test_the_kit_commands_of_docs_air_gap_run_as_shown(tmp_path):
    """docs/air-gap.md: a kit for this Python, then one for the three Pythons wgmesh runs
    on, each written where the stick is mounted (here a folder of the test's own), from a
    clone of this repository; install.sh then finds every file its sums list."""
    clone = tmp_path / "wgmesh"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(BIN.parent)
    kit_block = "docs/air-gap.md: .venv/bin/wgmesh kit --out /media/usb/wgmesh-kit"
    for i, cmd in enumerate(block(kit_block).commands):
        usb = tmp_path / f"usb{i}"
        run = subprocess.run(["bash", "-c", cmd.text.replace("/media/usb", str(usb))],
                             cwd=clone, capture_output=True, text=True, timeout=1200)
        assert run.returncode == cmd.exit, f"{cmd}\n{run.stderr[-2000:]}"
        sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"],
                              cwd=usb / "wgmesh-kit", capture_output=True, text=True)
        assert sums.returncode == 0, sums.stdout
        assert ("for Python 3.11, 3.12, 3.13" in run.stdout) == ("--python" in cmd.text)


def test_the_readmes_offline_python_install_runs_as_shown(tmp_path):
    """README, "Air-gapped sites": the wheels downloaded where PyPI is reachable, then a venv
    installed from them alone (pip --no-index), in a clone of this repository."""
    clone = tmp_path / "wgmesh"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for cmd in block("README.md: pip download -d wheels -r constraints.txt pip setuptools"
                     ).commands:
        run = subprocess.run(["bash", "-c", cmd.text], cwd=clone, env=env, capture_output=True,
                             text=True, timeout=1200)
        assert run.returncode == cmd.exit, f"{cmd}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    version = subprocess.run([str(clone / ".venv/bin/wgmesh"), "--version"],
                             capture_output=True, text=True)
    assert version.stdout.startswith("wgmesh "), version.stderr
