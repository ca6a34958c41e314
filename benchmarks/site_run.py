"""Time the main job on a fresh lab: cold site.yml, then the no-change re-run.

    .venv/bin/python benchmarks/site_run.py [--rounds 2] [--baseline dea2680] [--lab lab30]

Brings up a lab under its own name (the default lab as wgbench, or inventories/lab30 as
w30b), runs site.yml from bare hosts, runs it again (must report changed=0 on every host),
prints wall and CPU times and the peak memory of the controller's largest process
(ansible-playbook and its children), and takes the lab down. With --baseline, the same is done
in the same run for that commit of this repository (exported to a temporary folder, its own
plugins and wgmesh package), rounds alternating, and the ratio is printed. Targets: the
no-change re-run under 20 s, and at least 3x faster than commit dea2680.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from conftest import BIN, copy_topology  # noqa: E402
from meshlab import recap  # noqa: E402

from wgmesh.lab.runtime import Lab  # noqa: E402
from wgmesh.lab.topology import load_topology  # noqa: E402

LABS = {"lab": "wgbench", "lab30": "w30b"}


def export(commit: str, into: Path) -> Path:
    """The tree of a commit of this repository, as files."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def playbook(tree: Path, inventory: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """ansible-playbook site.yml of ``tree`` (its ansible.cfg, plugins and wgmesh package):
    wall and CPU seconds."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(tree / "ansible.cfg"),
               PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPATH=str(tree / "src"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="false")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml"],
                         capture_output=True, text=True, cwd=tree, env=env, timeout=900)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run.returncode == 0, run.stdout[-3000:]
    return wall, cpu, run


def one_round(tree: Path, which: str) -> dict[str, float]:
    name = LABS[which]
    with tempfile.TemporaryDirectory() as tmp:
        inv = Path(tmp)
        topology = copy_topology(inv, tree / f"inventories/{which}/topology.yml", name)
        mesh = (tree / f"inventories/{which}/mesh.yml").read_text()
        mesh = mesh.replace("../../policies/", f"{tree}/policies/")
        mesh = re.sub(r"/run/wgmesh-lab/\w+/", f"/run/wgmesh-lab/{name}/", mesh)
        (inv / "mesh.yml").write_text(mesh)
        lab = Lab(load_topology(topology))
        lab.down()
        lab.up()
        try:
            cold_wall, cold_cpu, first = playbook(tree, inv)
            # The largest RSS any finished child reached (ansible-playbook and its forks).
            cold_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            warm_wall, warm_cpu, second = playbook(tree, inv)
            changed = {h: r["changed"] for h, r in recap(second.stdout).items()}
            assert not any(changed.values()), changed
        finally:
            lab.down()
    hosts = len(re.findall(r"^\S+\s+: ok=", first.stdout, re.M))
    return {"hosts": hosts, "cold": cold_wall, "cold_cpu": cold_cpu, "warm": warm_wall,
            "warm_cpu": warm_cpu, "peak_mib": cold_peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", metavar="COMMIT",
                        help="also time this commit, in the same run (e.g. dea2680)")
    parser.add_argument("--lab", choices=sorted(LABS), default="lab",
                        help="the default 8-host lab, or the 30-host lab")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO}
        if args.baseline:
            trees[args.baseline] = export(args.baseline, Path(tmp))
        results: dict[str, list[dict]] = {label: [] for label in trees}
        for i in range(args.rounds):
            for label, tree in trees.items():
                r = one_round(tree, args.lab)
                results[label].append(r)
                print(f"round {i + 1} {label}: {r['hosts']} hosts in the recap, cold site.yml "
                      f"{r['cold']:.1f} s ({r['cold_cpu']:.1f} s CPU), no-change re-run "
                      f"{r['warm']:.1f} s ({r['warm_cpu']:.1f} s CPU), changed=0 everywhere; "
                      f"controller peak {r['peak_mib']:.0f} MiB",
                      flush=True)
    medians = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for label, rs in results.items()}
    for label, m in medians.items():
        print(f"{label}: {m['hosts']:.0f} hosts in the recap, cold median {m['cold']:.1f} s, "
              f"no-change median {m['warm']:.1f} s wall, {m['warm_cpu']:.1f} s CPU (target "
              f"< 20 s), controller peak {m['peak_mib']:.0f} MiB")
    if args.baseline:
        ours, base = medians["this tree"], medians[args.baseline]
        print(f"no-change run: {base['warm'] / ours['warm']:.1f}x faster wall, "
              f"{base['warm_cpu'] / ours['warm_cpu']:.1f}x less CPU than {args.baseline} "
              "(target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
