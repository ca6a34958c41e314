"""Time lab up and down, and measure what a lab host costs.

    .venv/bin/python benchmarks/lab_updown.py                           # default lab, 3 rounds
    .venv/bin/python benchmarks/lab_updown.py -i inventories/lab30 --ping

Prints wall time of each up and down, memory per host (PSS of the host's processes, and
MemAvailable lost per host, which includes kernel memory), and with --ping the time of
`ansible all -m ping` over SSH. Target: the default lab up and down in under 20 s each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from wgmesh.lab.runtime import Lab, run
from wgmesh.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[1]


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_pss_kib(lab: Lab, host: str) -> int:
    pids = run("ip", "netns", "pids", lab.topo.netns(host), check=False).split()
    return sum(pss_kib(p) for p in pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default=str(REPO / "inventories/lab"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ping", action="store_true", help="also time ansible all -m ping")
    args = parser.parse_args()

    topo = load_topology(args.inventory)
    lab = Lab(topo)
    lab.down()
    ups, downs = [], []
    for i in range(args.rounds):
        avail = mem_available_kib()
        t0 = time.monotonic()
        lab.up()
        ups.append(time.monotonic() - t0)
        t1 = time.monotonic()
        lab.up()
        again = time.monotonic() - t1
        if i == args.rounds - 1:
            hosts = len(topo.hosts)
            pss = [host_pss_kib(lab, h) for h in topo.hosts]
            lost = (avail - mem_available_kib()) / hosts
            print(f"hosts: {hosts}, routers: {len(topo.routers)}")
            print(f"memory per host: PSS of processes {statistics.mean(pss) / 1024:.1f} MiB "
                  f"(max {max(pss) / 1024:.1f}), MemAvailable lost {lost / 1024:.1f} MiB")
            if args.ping:
                env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
                bin_dir = Path(sys.executable).parent
                t2 = time.monotonic()
                out = subprocess.run([str(bin_dir / "ansible"), "-i", str(topo.source), "all",
                                      "-m", "ansible.builtin.ping"], capture_output=True,
                                     text=True, env=env, cwd=REPO)
                ok = out.stdout.count("SUCCESS")
                print(f"ansible all -m ping: {ok}/{hosts} SUCCESS in "
                      f"{time.monotonic() - t2:.2f} s (rc {out.returncode})")
        t3 = time.monotonic()
        lab.down()
        downs.append(time.monotonic() - t3)
        print(f"round {i + 1}: up {ups[-1]:.2f} s, up again (no-op) {again:.2f} s, "
              f"down {downs[-1]:.2f} s")
    print(f"lab {topo.name}: up median {statistics.median(ups):.2f} s (max {max(ups):.2f}), "
          f"down median {statistics.median(downs):.2f} s (max {max(downs):.2f}); "
          "target < 20 s each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
