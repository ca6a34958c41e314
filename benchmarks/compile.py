"""Compile synthetic meshes and print wall time and peak memory per size.

    .venv/bin/python benchmarks/compile.py [--sizes 100,1000,5000] [--rounds 3]

Each round of each size runs in a fresh process (peak RSS is per process) and the fastest
round is shown: 50 tags, 200 rules, 20 groups of 200 users. Phases: load (mesh.yml +
policy), lock (allocate addresses), compile+render (every host's wg-quick config, nftables
ruleset and names), and one host alone (what `wgmesh render --host` costs). Targets on a
2-core machine: 1,000 nodes under 3 s and 1 GiB; one host alone O(nodes).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TAGS = [f"tag:t{i}" for i in range(50)]
USERS = [f"user{i}@example.com" for i in range(200)]
GROUPS = {f"group:g{i}": USERS[i * 10:(i + 1) * 10] for i in range(20)}
PORTS = ["22", "80,443", "5432", "8000-8100", "*", "53"]


def write_inputs(d: Path, n: int) -> None:
    rnd = random.Random(n)
    nodes = {}
    for i in range(n):
        spec = {"ansible_host": f"192.0.2.{i % 250 + 1}"}
        if rnd.random() < 0.6:
            spec["tags"] = sorted(rnd.sample(TAGS, rnd.choice((1, 1, 2))))
        else:
            spec["owner"] = rnd.choice(USERS)
        if rnd.random() < 0.3:
            spec["endpoint"] = f"192.0.2.{i % 250 + 1}:51820"
        nodes[f"node{i:05d}"] = spec
    mesh = {"plugin": "wgmesh", "policy": "policy.hujson", "nodes": nodes}
    (d / "mesh.yml").write_text(yaml.safe_dump(mesh, sort_keys=False))
    selectors = [*TAGS, *GROUPS]
    acls = []
    for _ in range(200):
        acls.append({"action": "accept",
                     "src": rnd.sample(selectors, rnd.choice((1, 2))),
                     "dst": [f"{t}:{rnd.choice(PORTS)}" for t in rnd.sample(TAGS, 2)]})
    policy = {"groups": GROUPS, "tagOwners": {t: [] for t in TAGS}, "acls": acls}
    (d / "policy.hujson").write_text(json.dumps(policy, indent=1))


def measure(n: int) -> dict:
    from wgmesh import render
    from wgmesh.build import load_inputs
    from wgmesh.compile.compiler import Compiler, fewer_gc_passes
    from wgmesh.lock import Lock

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_inputs(d, n)
        t0 = time.perf_counter()
        mesh, policy = load_inputs(d)
        t1 = time.perf_counter()
        lock = Lock(mesh.lock_path)
        alloc = lock.allocate(mesh)
        lock.save()
        t2 = time.perf_counter()
        # One host alone first, with cold caches: what `wgmesh render --host` costs.
        one = Compiler(mesh, policy, alloc)
        h = one.host(one.res.names[len(one.res.names) // 2])
        render.nftables(h, mesh.network)
        render.wg_quick(h, mesh.network)
        del one, h
        t3 = time.perf_counter()
        comp = Compiler(mesh, policy, alloc)
        size = peers = elements = 0
        with fewer_gc_passes():  # as the wgmesh_compile action does
            for name in comp.res.names:
                h = comp.host(name)
                text = (render.wg_quick(h, mesh.network) + render.nftables(h, mesh.network)
                        + render.hosts_block(h))
                size += len(text)
                peers += len(h.peers)
                elements += sum(len(v) for v in h.sets.values())
        t4 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"nodes": n, "load_s": t1 - t0, "lock_s": t2 - t1, "compile_render_s": t4 - t3,
            "total_s": (t2 - t0) + (t4 - t3), "one_host_s": t3 - t2, "peak_mib": peak,
            "output_mib": size / 2**20, "peers": peers, "set_elements": elements}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh processes per size; the fastest is shown (a shared "
                             "machine's noise only ever adds time), peak memory is the largest")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    print(f"{'nodes':>6} {'load':>7} {'lock':>7} {'compile+render':>15} {'total':>7} "
          f"{'one host':>9} {'peak':>9} {'output':>9} {'peers':>9} {'set elems':>10}")
    for n in (int(x) for x in args.sizes.split(",")):
        rounds = [json.loads(subprocess.run([sys.executable, __file__, "--one", str(n)],
                                            capture_output=True, text=True, check=True).stdout)
                  for _ in range(args.rounds)]
        r = min(rounds, key=lambda x: x["total_s"])
        r["peak_mib"] = max(x["peak_mib"] for x in rounds)
        print(f"{r['nodes']:>6} {r['load_s']:>6.2f}s {r['lock_s']:>6.2f}s "
              f"{r['compile_render_s']:>14.2f}s {r['total_s']:>6.2f}s {r['one_host_s']:>8.3f}s "
              f"{r['peak_mib']:>6.0f} MiB {r['output_mib']:>5.1f} MiB {r['peers']:>9} "
              f"{r['set_elements']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
