"""Apply one large bundle on a lab host: the module's own time, cold and unchanged.

    .venv/bin/python benchmarks/apply.py [--peers 1000]

A mesh of a hub and N nodes (10 tags, each allowed to 3 separate ports of the hub, so the
hub's sets hold 3 elements per peer and family) is compiled; the hub's bundle is applied with
wgmesh_apply on the lab host "web" (a lab of its own, wgapb), three times: from nothing, then
unchanged twice. Printed: peers, set elements, bundle size, the module's time on the host
(what it reports) and the playbook's wall time. Targets (issue 10): 1,000 peers and 5,000
elements applied in under 1 s, re-applied unchanged in under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from meshkit import fake_key  # noqa: E402
from meshlab import MeshLab  # noqa: E402

from wgmesh.build import build  # noqa: E402

PLAY = """
- hosts: web
  gather_facts: false
  vars_files: [bundle.yml]
  tasks:
    - name: Apply the hub's bundle
      wgmesh_apply:
        bundle: "{{ bench_bundle }}"
        key_file: /etc/wireguard/wg0.key
      register: bench
    - name: Report
      ansible.builtin.debug:
        msg: "SECONDS={{ bench.seconds }} CHANGED={{ bench.changed }}"
"""


def write_inputs(d: Path, n: int) -> None:
    nodes = {"hub": {"ansible_host": "192.0.2.1", "endpoint": "203.0.113.250:51820",
                     "tags": ["tag:hub"]}}
    for i in range(n):
        nodes[f"n{i:04d}"] = {"ansible_host": "192.0.2.1", "tags": [f"tag:k{i % 10}"],
                              "endpoint": f"203.0.113.{i % 250 + 1}:{51820 + i // 250}"}
    (d / "mesh.yml").write_text(yaml.safe_dump(
        {"plugin": "wgmesh", "policy": "policy.hujson", "nodes": nodes}, sort_keys=False))
    tags = ["tag:hub", *(f"tag:k{k}" for k in range(10))]
    acls = [{"action": "accept", "src": [f"tag:k{k}"], "proto": "tcp",
             "dst": ["tag:hub:" + ",".join(str(1000 + k * 10 + 2 * j) for j in range(3))]}
            for k in range(10)]
    (d / "policy.hujson").write_text(json.dumps(
        {"tagOwners": {t: [] for t in tags}, "acls": acls}))


def hub_bundle(lab: MeshLab, inputs: Path, peers: int) -> tuple[dict, dict]:
    """The compiled mesh of ``peers`` nodes (write_inputs) and the hub's bundle, with the key
    the lab host "web" makes for it (every other key made up)."""
    key = lab.run("web", "sh", "-c", "umask 077; mkdir -p /etc/wireguard; wg genkey "
                  "> /etc/wireguard/wg0.key; wg pubkey < /etc/wireguard/wg0.key").stdout.strip()
    write_inputs(inputs, peers)
    nodes = build(inputs, run_tests=False).mesh.nodes
    keys = {n: fake_key(n) for n in nodes if n != "hub"} | {"hub": key}
    b = build(inputs, run_tests=False, keys=keys)
    return b, b.bundle("hub")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the lab up and the bundle in DIR (to profile)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "inputs").mkdir()
        (d / "lab").mkdir()
        lab = MeshLab(d / "lab", "wgapb")
        lab.lab.down()
        lab.lab.up()
        try:
            b, bundle = hub_bundle(lab, d / "inputs", args.peers)
            h = b.compiler.host("hub")
            elements = len(re.findall(r"\. tcp \.", bundle["nftables"]))
            # Not in the inventory folder: Ansible reads every file there as a source.
            (d / "inputs" / "bundle.yml").write_text(json.dumps({"bench_bundle": bundle}))
            play = d / "inputs" / "apply.yml"
            play.write_text(PLAY)
            size = len(json.dumps(bundle)) / 2**10
            print(f"hub bundle: {len(h.peers)} peers, {elements} set elements, {size:.0f} KiB")
            for label in ("from nothing", "unchanged", "unchanged"):
                t0 = time.monotonic()
                run = lab.playbook(play=play)
                wall = time.monotonic() - t0
                assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
                found = re.search(r"SECONDS=(\S+) CHANGED=(\S+)", run.stdout)
                print(f"  apply {label:<13} module {float(found.group(1)):.3f} s on the host, "
                      f"changed={found.group(2)}, playbook wall {wall:.1f} s")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / "args.json").write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
                    "bundle": bundle, "key_file": "/etc/wireguard/wg0.key"}}))
        finally:
            if not args.keep:
                lab.lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
