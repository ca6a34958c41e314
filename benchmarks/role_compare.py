"""wgmesh against the Ansible WireGuard role users pick today, rendering each host's files.

    .venv/bin/python benchmarks/role_compare.py --githubixx PATH [--sizes 50,100,200,400]

PATH is a checkout of github.com/githubixx/ansible-role-wireguard (not part of wgmesh; read
where it is, never copied). Each size N is a full mesh of N hosts, all with
ansible_connection=local and forks 2, so only the rendering work is timed:

  githubixx: that role's own task that writes wg.conf from its template
             (templates/etc/wireguard/wg.conf.j2, which loops over every host's hostvars
             for every host: quadratic), into a folder per host.
  wgmesh:    one wgmesh_compile for all hosts (run_once, on the controller), then each host
             writes its bundle's files (wg-quick file, nftables table, names, hop tunnel) into
             a folder per host with wgmesh_apply root=... (nothing live is touched).

Printed per size: both wall times and the ratio. Without --githubixx only wgmesh is timed.
Targets (issue 10): at 400 hosts at least 10x faster than githubixx, and linear in hosts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

OURS = """
- hosts: wgmesh
  gather_facts: false
  tasks:
    - name: Compile every host's bundle once
      wgmesh_compile:
        mesh: "{{ wgmesh_mesh_file }}"
        hosts: "{{ ansible_play_batch }}"
      run_once: true
      register: plan
    - name: Write the host's files from its bundle
      wgmesh_apply:
        bundle: "{{ plan.hosts[inventory_hostname].bundle }}"
        key_file: /nonexistent
        root: "{{ out }}/{{ inventory_hostname }}"
"""

THEIRS = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Generate WireGuard configuration file (githubixx's template task)
      vars:
        wireguard__ansible_managed: "Ansible managed"
      ansible.builtin.template:
        src: "{{ githubixx }}/templates/etc/wireguard/wg.conf.j2"
        dest: "{{ out }}/{{ inventory_hostname }}/wg0.conf"
        mode: "0600"
"""


def key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def names(n: int) -> list[str]:
    return [f"h{i:04d}" for i in range(n)]


def endpoint(i: int) -> str:
    return f"192.0.2.{i % 250 + 1}"


def env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORKS="2",
                PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_NOCOLOR="1",
                ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_LOCALHOST_WARNING="false")


def timed(argv: list[str], cwd: Path, **extra: str) -> float:
    t0 = time.monotonic()
    run = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env() | extra)
    took = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return took


def ours(n: int, d: Path) -> float:
    inv = d / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    nodes = {h: {"ansible_host": "127.0.0.1", "endpoint": f"{endpoint(i)}:51820",
                 "tags": ["tag:server"]} for i, h in enumerate(names(n))}
    (inv / "mesh.yml").write_text(yaml.safe_dump(
        {"plugin": "wgmesh", "policy": "policy.hujson", "lockfile": str(d / "mesh.lock.yml"),
         "nodes": nodes}))
    (d / "policy.hujson").write_text(json.dumps(
        {"tagOwners": {"tag:server": []},
         "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}))
    (inv / "mesh.yml").write_text((inv / "mesh.yml").read_text().replace(
        "policy: policy.hujson", f"policy: {d / 'policy.hujson'}"))
    (inv / "group_vars" / "all.yml").write_text("ansible_connection: local\n")
    # Keys pinned beforehand, as after a first run: this times the rendering alone.
    lock = subprocess.run([str(BIN / "wgmesh"), "lock", "-i", str(inv)], capture_output=True,
                          text=True)
    assert lock.returncode == 0, lock.stderr
    text = (d / "mesh.lock.yml").read_text()
    for h in names(n):
        text = text.replace(f"  {h}:\n", f"  {h}:\n    public_key: {key(h)}\n", 1)
    (d / "mesh.lock.yml").write_text(text)
    (d / "play.yml").write_text(OURS)
    return timed([str(BIN / "ansible-playbook"), "-i", str(inv), str(d / "play.yml"),
                  "-e", f"out={d / 'out'}"], REPO)


def theirs(n: int, d: Path, role: Path) -> float:
    hosts = {}
    for i, h in enumerate(names(n)):
        hosts[h] = {"ansible_connection": "local",
                    "wireguard_address": f"10.8.{i // 250}.{i % 250 + 1}/16",
                    "wireguard_endpoint": endpoint(i), "wireguard_port": 51820,
                    "wireguard__fact_public_key": key(h), "wireguard_private_key": key(h + "x")}
        (d / "out" / h).mkdir(parents=True)  # /etc/wireguard exists on a real host
    (d / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (d / "play.yml").write_text(THEIRS)
    return timed([str(BIN / "ansible-playbook"), "-i", str(d / "hosts.yml"), str(d / "play.yml"),
                  "-e", f"out={d / 'out'}", "-e", f"githubixx={role}"], REPO,
                 ANSIBLE_INVENTORY_ENABLED="yaml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--githubixx", type=Path, metavar="PATH",
                        help="a checkout of githubixx/ansible-role-wireguard")
    parser.add_argument("--sizes", default="50,100,200,400")
    args = parser.parse_args()
    print(f"{'hosts':>6} {'wgmesh':>9} {'per host':>9} {'githubixx':>10} {'ratio':>7}")
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            a = ours(n, Path(tmp))
        line = f"{n:>6} {a:>8.1f}s {a / n * 1000:>7.0f}ms"
        if args.githubixx:
            with tempfile.TemporaryDirectory() as tmp:
                b = theirs(n, Path(tmp), args.githubixx.resolve())
            line += f" {b:>9.1f}s {b / a:>6.1f}x"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
