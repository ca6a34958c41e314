"""Data-plane cost of wgmesh's filters: TCP throughput and latency over the mesh.

    .venv/bin/python benchmarks/dataplane.py [--seconds 5] [--rounds 3]

On a lab of its own (wgdp), after site.yml, two paths are measured:
  mesh    pub1 -> pub2 over WireGuard (tag:web -> tag:db, tcp 5432), both hosts filtering;
  router  home1 -> legacy through the subnet router pub3 (alice -> legacy, tcp 5201): home1
          filters on departure, pub3 on forwarding.
each with
  (a) no wgmesh filter on the hosts of the path (the router keeps only its source NAT, which
      the office LAN needs to answer),
  (b) the table of the lab policy (plus the rule for the router path's port),
  (c) the table of that policy plus 1,000 rules whose sources are addresses of no node:
      6,000 elements in pub2's input set and in pub3's forwarding set. Peers are the same.
The three tables are switched with `nft -f` between measurements, rounds interleaved.
Throughput: iperf3 (one TCP stream, -t SECONDS, received bits/s); latency: 200 pings every
10 ms (average RTT). Printed per path and variant: medians over the rounds, and (c) relative
to (a) and (b). Goal: (c) at least 95% of (a)'s throughput, and within noise of (b).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from meshlab import MeshLab, fresh_lab  # noqa: E402

RULESET = "/etc/wgmesh/nftables.nft"
LEGACY = "198.51.100.130"
ROUTER_PORT = 5201
MESH_PORT = 5432
EXTRA_RULE = ('{"action": "accept", "src": ["alice@example.com"], "proto": "tcp", '
              f'"dst": ["legacy:{ROUTER_PORT}"]}},')


NAT_ONLY = """table inet wgmesh {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname "wg0" oifname != "wg0" masquerade
    }
}
"""


def policies(tmp: Path) -> tuple[Path, Path]:
    """(b): the lab policy and the router path's rule; (c): that and 1,000 more rules."""
    base = (REPO / "policies/lab.hujson").read_text()
    anchor = '"acls": ['
    b = base.replace(anchor, anchor + "\n    " + EXTRA_RULE, 1)
    rules = []
    for i in range(1000):
        src = f"100.100.{i // 200}.{i % 200 + 1}"  # in the mesh pool, owned by no node
        # Ports two apart: adjacent ones would merge into one range element.
        ports = ",".join(str(10000 + 12 * i + 2 * k) for k in range(6))
        rules.append(f'{{"action": "accept", "src": ["{src}"], "proto": "tcp", '
                     f'"dst": ["tag:db:{ports}", "{LEGACY}:{ports}"]}},')
    c = b.replace(anchor, anchor + "\n    " + "\n    ".join(rules), 1)
    (tmp / "b.hujson").write_text(b)
    (tmp / "c.hujson").write_text(c)
    return tmp / "b.hujson", tmp / "c.hujson"


def elements(lab: MeshLab, node: str) -> int:
    """Elements of the host's sets (all of them, ports and pings, both families)."""
    text = lab.run(node, "nft", "list", "table", "inet", "wgmesh").stdout
    return sum(block.count(",") + 1 for block in re.findall(r"elements = \{([^}]*)\}", text))


def iperf(lab: MeshLab, client: str, server: str, addr: str, port: int, seconds: int) -> float:
    srv = lab.start(server, ["iperf3", "-s", "-1", "-B", addr, "-p", str(port)])
    try:
        time.sleep(0.5)
        out = lab.run(client, "iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J",
                      "--connect-timeout", "3000", timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        lab.stop(srv)


def rtt(lab: MeshLab, client: str, addr: str) -> float:
    out = lab.run(client, "ping", "-q", "-c", "200", "-i", "0.01", addr, timeout=30).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("iperf3"):
        raise SystemExit("iperf3 is missing: ./dev.sh install (or apt-get install iperf3)")
    with fresh_lab("wgdp") as (lab, folder):
        return measure(lab, folder, args)


def measure(lab: MeshLab, tmp: Path, args) -> int:
    path_b, path_c = policies(tmp)
    filtering = ("pub1", "pub2", "pub3", "home1")
    tables: dict[str, dict[str, str]] = {}
    for variant, policy in (("c", path_c), ("b", path_b)):
        run = lab.playbook("-e", f"wgmesh_policy_file={policy}")
        assert run.returncode == 0, run.stdout[-3000:]
        tables[variant] = {n: lab.run(n, "cat", RULESET).stdout for n in filtering}
    lab.settle()
    counts = {}
    pub2 = lab.plan()["hosts"]["pub2"]["addresses"][0]
    paths = {"mesh": ("pub1", "pub2", pub2, MESH_PORT),
             "router": ("home1", "legacy", LEGACY, ROUTER_PORT)}
    results: dict[tuple[str, str], dict[str, list[float]]] = {}

    def load(variant: str) -> None:
        for n in filtering:
            lab.run(n, "nft", "delete", "table", "inet", "wgmesh", check=False)
            if variant != "a":
                lab.run(n, "nft", "-f", "-", stdin=tables[variant][n])
            elif n == "pub3":
                lab.run(n, "nft", "-f", "-", stdin=NAT_ONLY)
        counts[variant] = {n: elements(lab, n) if variant != "a" else 0
                           for n in ("pub2", "pub3")}

    for r in range(args.rounds):
        for variant in ("a", "b", "c"):
            load(variant)
            for name, (client, server, addr, port) in paths.items():
                got = results.setdefault((name, variant), {"gbit": [], "rtt": []})
                got["gbit"].append(iperf(lab, client, server, addr, port, args.seconds))
                got["rtt"].append(rtt(lab, client, addr))
                print(f"round {r + 1} {name} ({variant}): {got['gbit'][-1]:.2f} Gbit/s, "
                      f"RTT {got['rtt'][-1]:.3f} ms", flush=True)
    load("b")  # leave the hosts as the run left them

    print(f"\nset elements: (b) pub2 {counts['b']['pub2']}, pub3 {counts['b']['pub3']}; "
          f"(c) pub2 {counts['c']['pub2']}, pub3 {counts['c']['pub3']}")
    print(f"{'path':<8} {'variant':<26} {'Gbit/s':>8} {'RTT ms':>8}")
    labels = {"a": "(a) no table", "b": "(b) lab policy",
              "c": "(c) +1,000 rules"}
    for name in paths:
        med = {v: (statistics.median(results[(name, v)]["gbit"]),
                   statistics.median(results[(name, v)]["rtt"])) for v in "abc"}
        for v in "abc":
            print(f"{name:<8} {labels[v]:<26} {med[v][0]:>8.2f} {med[v][1]:>8.3f}")
        print(f"{name:<8} (c)/(a) throughput {med['c'][0] / med['a'][0]:.1%}, (c)/(b) "
              f"{med['c'][0] / med['b'][0]:.1%}; spread of (b) over rounds "
              f"{min(results[(name, 'b')]['gbit']):.2f}-{max(results[(name, 'b')]['gbit']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
