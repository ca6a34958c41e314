"""The README's "Your own mesh", line by line as written, on lab hosts that stand in for one's
own servers: wgmesh installed from its wheel into a venv of its own (not this checkout), a
repository from `wgmesh init`, the one edit the README asks for (the hosts' addresses and the
SSH login), then check, graph, a check run that changes nothing, the run, a second run that
changes nothing, and the commit. Then the merge jobs of the CI files it wrote, in it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, copy_topology
from docmd import block
from meshlab import recap

from wgmesh.lab.runtime import Lab
from wgmesh.lab.topology import load_topology

pytestmark = pytest.mark.lab

# Which lab host plays which server of the example mesh: two public, one behind NAT.
SERVERS = {"gw1": "pub1", "web1": "pub2", "db1": "home1"}


def readme_steps() -> list[str]:
    """The block as the README shows it (tests/docmd.py), comments kept: "# Edit" is a step."""
    return list(block("README.md: python3 -m venv ~/wgmesh-venv").lines)


def edit_for_the_lab(site: Path, lab: Lab) -> None:
    """What the README leaves to the reader: the hosts' addresses, and how SSH reaches them
    (here through the lab's ProxyCommand, with the lab's key, as root)."""
    mesh_file = site / "inventories/prod/mesh.yml"
    mesh = yaml.safe_load(mesh_file.read_text())
    text = mesh_file.read_text()
    for server, host in SERVERS.items():
        address = str(lab.topo.hosts[host].address)
        old = mesh["nodes"][server]["ansible_host"]
        text = text.replace(f"ansible_host: {old}", f"ansible_host: {address}")
        if lab.topo.natted(lab.topo.hosts[host]):
            text = text.replace(f"    endpoint: {old}:51820\n", "")
        else:
            text = text.replace(f"endpoint: {old}:", f"endpoint: {address}:")
    mesh_file.write_text(text)
    state = lab.topo.state_dir
    (site / "inventories/prod/group_vars/all.yml").write_text(yaml.safe_dump({
        "ansible_user": "root",
        "ansible_become": False,
        "ansible_ssh_private_key_file": str(state / "id_ed25519"),
        "ansible_ssh_common_args": (
            f'-o ProxyCommand="nsenter --net=/run/netns/{lab.topo.fabric} nc %h %p" '
            f"-o UserKnownHostsFile={state / 'known_hosts'} -o StrictHostKeyChecking=yes"),
        "ansible_control_path_dir": str(state / "cp"),
    }))


def test_the_readme_from_nothing_to_ones_own_mesh(tmp_path):
    steps = readme_steps()
    assert steps[1] == "~/wgmesh-venv/bin/pip install wgmesh"
    wheels = tmp_path / "wheels"
    subprocess.run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    [wheel] = wheels.glob("wgmesh-*.whl")
    # The package index here is PyPI's mirror, which has no wgmesh: the wheel stands in.
    steps[1] = f"~/wgmesh-venv/bin/pip install -q -c {REPO}/constraints.txt {wheel}"

    lab = Lab(load_topology(copy_topology(tmp_path, REPO / "inventories/lab/topology.yml",
                                          "wgo")))
    lab.down()
    lab.up()
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), PIP_CACHE_DIR=str(Path.home() / ".cache/pip"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", ANSIBLE_NOCOLOR="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    # One shell per line, as a reader types them: the directory and PATH carry over.
    cwd, said = work, {}
    try:
        for step in steps:
            if step.startswith("# Edit"):
                edit_for_the_lab(cwd, lab)
                continue
            script = f'export PATH="{env["PATH"]}"\n' if "PATH" in said else ""
            run = subprocess.run(["bash", "-e", "-c", f'{script}{step}\necho "@@$PWD@@$PATH"'],
                                 cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            assert run.returncode == 0, f"{step}\n{run.stdout[-4000:]}\n{run.stderr[-3000:]}"
            out, marker = run.stdout.rsplit("@@", 2)[0], run.stdout.rsplit("@@", 2)[1:]
            cwd, env["PATH"] = Path(marker[0]), marker[1].strip()
            said["PATH"] = True
            said.setdefault(step, []).append(out)
            if step == "ansible-playbook site.yml --check":
                # The check run touches no host: no key, no configuration.
                for host in SERVERS.values():
                    ls = subprocess.run(lab.exec_argv(host, ["ls", "-A", "/etc/wireguard"]),
                                        capture_output=True, text=True)
                    assert ls.stdout.strip() == "", (host, ls.stdout)

        site = work / "my-mesh"
        assert cwd == site
        assert "ok: 3 nodes" in said["wgmesh check"][0]
        graph = said["ansible-inventory --graph"][0]
        assert all(f"--{name}" in graph for name in SERVERS), graph
        check_run, first, second = said["ansible-playbook site.yml --check"] + \
            said["ansible-playbook site.yml"]
        assert all(r["failed"] == 0 for r in recap(check_run).values()), check_run[-3000:]
        assert all(r["failed"] == 0 and r["changed"] > 0 for name, r in recap(first).items()
                   if name in SERVERS), first[-3000:]
        assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap(second).values()), \
            second[-3000:]
        lock = yaml.safe_load((site / "inventories/prod/mesh.lock.yml").read_text())
        assert set(lock["nodes"]) == set(SERVERS)
        committed = subprocess.run(["git", "-C", str(site), "ls-files"], capture_output=True,
                                   text=True).stdout.split()
        assert {"inventories/prod/mesh.lock.yml", "requirements.txt",
                ".github/workflows/wgmesh.yml", ".gitlab-ci.yml"} <= set(committed)
        # The tunnels carry what the example policy allows: web1 to db1 on 5432 (db1 is
        # behind NAT, so through its own keepalives), and nothing else.
        db1 = lock["nodes"]["db1"]["ipv4"]
        listener = subprocess.Popen(lab.exec_argv("home1", ["nc", "-l", "-k", "5432"]),
                                    stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            for port, allowed in ((5432, True), (22, False)):
                probe = subprocess.run(lab.exec_argv("pub2", ["nc", "-z", "-w", "3", db1,
                                                             str(port)]))
                assert (probe.returncode == 0) is allowed, port
        finally:
            os.killpg(listener.pid, 9)
            listener.wait()

        # The merge jobs of the CI files `wgmesh init` wrote, in the repository (its venv
        # is the README's): check --locked, then site.yml, which changes nothing.
        (site / ".venv").symlink_to(home / "wgmesh-venv")
        github = yaml.safe_load((site / ".github/workflows/wgmesh.yml").read_text())
        gitlab = yaml.safe_load((site / ".gitlab-ci.yml").read_text())
        jobs = [[s["run"] for s in github["jobs"]["apply"]["steps"] if "run" in s],
                gitlab["apply"]["script"]]
        for job in jobs:
            assert job[0] == "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
            run = subprocess.run(["bash", "-e", "-c", "\n".join(job[1:])], cwd=site,
                                 env={**env, "WGMESH_INVENTORY": "inventories/prod"},
                                 capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
            assert all(r["changed"] == 0 for r in recap(run.stdout).values()), run.stdout
    finally:
        lab.down()
