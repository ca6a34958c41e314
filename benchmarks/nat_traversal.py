"""NAT traversal on the lab: how soon a pair behind two NATs goes direct, how soon it falls
back when a NAT remaps it, and what the direct path is worth against the relayed one.

    .venv/bin/python benchmarks/nat_traversal.py [--rounds 5] [--seconds 5]

On a lab of its own (wgnt), after site.yml: home1 (behind nat-home) and branch1 (behind
nat-branch), both NATs keeping a host's port for every destination; pub1 relays them;
pub1 and pub2 are lighthouses. Each round:
  1. the pair on its relay (their agents stopped, the relay endpoints set): ping RTT (200
     pings every 10 ms) and iperf3 (one TCP stream, branch1 -> home1:8080, -t SECONDS);
  2. their agents start: seconds until both agents report the pair direct;
  3. the same RTT and iperf3 over the direct path;
  4. nat-branch remaps branch1 to another external port (its mappings flushed): seconds
     until home1's agent has the pair back on the relay;
  5. nat-branch as before.
Printed: each round's figures, then the medians. The lighthouses' agents run throughout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
sys.path.insert(0, str(REPO / "benchmarks"))

from dataplane import iperf, rtt  # noqa: E402
from meshlab import MeshLab, fresh_lab  # noqa: E402

from wgmesh.lab.runtime import nat_ruleset  # noqa: E402

PAIR = ("home1", "branch1")
AGENT = "/var/lib/wgmesh/agent.pyz"


def path(lab: MeshLab, node: str, peer: str) -> str | None:
    out = lab.run(node, "cat", "/var/lib/wgmesh/agent.json", check=False).stdout
    return json.loads(out or "{}").get("peers", {}).get(peer, {}).get("path")


def wait(predicate, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"gave up after {timeout} s")


def to_relay(lab: MeshLab, plan: dict) -> None:
    for node in PAIR:
        lab.run(node, "pkill", "-f", AGENT, check=False)
    time.sleep(0.5)
    for node, peer in (PAIR, PAIR[::-1]):
        key = lab.run(peer, "wg", "show", "wg0", "public-key").stdout.strip()
        ep = next(p["endpoint"] for p in plan["hosts"][node]["peers"] if p["name"] == peer)
        lab.run(node, "wg", "set", "wg0", "peer", key, "endpoint", ep)
        lab.run(node, "rm", "-f", "/var/lib/wgmesh/agent.json")


def measure(lab: MeshLab, args) -> int:
    run = lab.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    lab.settle()
    plan = lab.plan()
    home1 = plan["hosts"]["home1"]["addresses"][0]
    lab.lab.start_agents(["pub1", "pub2"])
    router = lab.topo.routers["nat-branch"]
    rows = []
    for r in range(args.rounds):
        to_relay(lab, plan)
        row = {"relayed rtt ms": rtt(lab, "branch1", home1),
               "relayed Gbit/s": iperf(lab, "branch1", "home1", home1, 8080, args.seconds)}
        lab.lab.start_agents(list(PAIR))
        row["to direct s"] = wait(lambda: all(path(lab, a, b) == "direct (punched)"
                                              for a, b in (PAIR, PAIR[::-1])), 60)
        row["direct rtt ms"] = rtt(lab, "branch1", home1)
        row["direct Gbit/s"] = iperf(lab, "branch1", "home1", home1, 8080, args.seconds)
        lab.run("nat-branch", "nft", "insert", "rule", "ip", "wgmesh_lab_nat", "postrouting",
                "oifname", "wan", "ip", "saddr", "198.18.0.10", "udp", "sport", "51820",
                "snat", "to", f"192.0.2.23:{40000 + r}")
        lab.run("nat-branch", "conntrack", "-F", check=False)
        row["to fallback s"] = wait(lambda: path(lab, "home1", "branch1") == "relay via pub1",
                                    60)
        lab.run("nat-branch", "nft", "-f", "-", stdin=nat_ruleset(router))
        lab.run("nat-branch", "conntrack", "-F", check=False)
        rows.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()),
              flush=True)
    print("\nmedians over", args.rounds, "rounds (pair home1 <-> branch1, relay pub1):")
    for key in rows[0]:
        print(f"  {key:<15} {statistics.median(row[key] for row in rows):.3g}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    for tool in ("iperf3", "conntrack"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: ./dev.sh install")
    with fresh_lab("wgnt") as (lab, _folder):
        return measure(lab, args)


if __name__ == "__main__":
    sys.exit(main())
