"""The monitor's textfile refresh on a lab host with a large bundle.

    .venv/bin/python benchmarks/textfile.py [--peers 1000] [--rounds 20]

The hub of benchmarks/apply.py's mesh (N peers, 10 tags, 3 ports each) is applied on the lab
host "web" (a lab of its own, wgtxb) with the monitor, and every peer's public key made up,
so `wg show dump` lists N peers. Then the monitor's refresh (wg show dump, the table's
counters, drift against the bundle, the textfile written by rename) runs in one process on
the host: first right after the apply (the ruleset is the one the apply recorded: counters
only), then after another table is added (the whole table listed and compared, once), then
``--rounds`` times more (counters only). Then once as its own process (`monitor.pyz
--once`, Python's start included).
Printed: peers, textfile size and series, the refresh times. Target (issue 31): under
100 ms per refresh at 1,000 peers.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

from apply import MeshLab, hub_bundle

from wgmesh import programs

PLAY = """
- hosts: web
  gather_facts: false
  vars_files: [bundle.yml]
  tasks:
    - name: Apply the hub's bundle with the monitor
      wgmesh_apply:
        bundle: "{{ bench_bundle }}"
        key_file: /etc/wireguard/wg0.key
        monitor_program: "{{ bench_monitor }}"
        metrics_textfile: /var/lib/prometheus/node-exporter/wgmesh.prom
"""

TIMED = """
import json, statistics, subprocess, sys, time
sys.path.insert(0, "/var/lib/wgmesh/monitor.pyz")
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_monitor import Monitor
m = Monitor("/var/lib/wgmesh")

def timed():
    t0 = time.perf_counter()
    assert m.refresh()
    return time.perf_counter() - t0
applied = timed()  # the ruleset as the apply recorded it
subprocess.run(["nft", "add", "table", "inet", "scratch"], check=True)  # someone else's change
foreign = timed()
times = [timed() for _ in range(int(sys.argv[1]))]
print(json.dumps({"applied": applied, "foreign": foreign, "median": statistics.median(times),
                  "worst": max(times)}))
if sys.argv[2] == "profile":
    import cProfile, pstats
    for argv in (["wg", "show", "wg0", "dump"], ["nft", "-j", "list", "table", "inet", "wgmesh"],
                 ["nft", "-j", "list", "counters", "table", "inet", "wgmesh"]):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True)
        print(" ".join(argv), f"{(time.perf_counter() - t0) * 1000:.0f} ms", file=sys.stderr)
    cProfile.run("m.refresh()", "/tmp/refresh.prof")
    pstats.Stats("/tmp/refresh.prof", stream=sys.stderr).sort_stats("cumulative").print_stats(18)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="and where one refresh's "
                        "time goes (cProfile, on standard error)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "inputs").mkdir()
        (d / "lab").mkdir()
        lab = MeshLab(d / "lab", "wgtxb")
        lab.lab.down()
        lab.lab.up()
        try:
            _, bundle = hub_bundle(lab, d / "inputs", args.peers)
            monitor = base64.b64encode(programs.monitor_program()).decode()
            (d / "inputs" / "bundle.yml").write_text(json.dumps(
                {"bench_bundle": bundle, "bench_monitor": monitor}))
            play = d / "inputs" / "apply.yml"
            play.write_text(PLAY)
            run = lab.playbook(play=play)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            # The lab has no systemd: nothing runs the monitor but this benchmark.
            timing = lab.run("web", "python3", "-c", TIMED, str(args.rounds),
                             "profile" if args.profile else "-", timeout=300)
            timed = json.loads(timing.stdout)
            if args.profile:
                print(timing.stderr, file=sys.stderr)
            t0 = time.monotonic()
            lab.run("web", "python3", "/var/lib/wgmesh/monitor.pyz", "--once")
            once = time.monotonic() - t0
            text = lab.run("web", "cat", "/var/lib/prometheus/node-exporter/wgmesh.prom").stdout
            series = sum(1 for line in text.splitlines() if not line.startswith("#"))
            peers = text.count("wgmesh_peer_last_handshake_timestamp_seconds{")
            print(f"hub: {peers} peers, textfile {len(text) / 2**10:.0f} KiB, {series} series")
            print(f"  first refresh after the apply (the ruleset as it recorded it): "
                  f"{timed['applied'] * 1000:.0f} ms")
            print(f"  first refresh after another change of the ruleset (the whole table "
                  f"listed and compared, once): {timed['foreign'] * 1000:.0f} ms")
            print(f"  refresh otherwise (counters only; {args.rounds} rounds): median "
                  f"{timed['median'] * 1000:.0f} ms, worst {timed['worst'] * 1000:.0f} ms "
                  "(target: under 100 ms at 1,000 peers)")
            print(f"  monitor.pyz --once, as its own process (with the lab's exec): "
                  f"{once * 1000:.0f} ms")
        finally:
            lab.lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
