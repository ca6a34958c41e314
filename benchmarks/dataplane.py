"""Data-plane cost of wgmesh's filters: TCP throughput and latency over the mesh.

    .venv/bin/python benchmarks/dataplane.py [--seconds 5] [--rounds 7] [--perf]

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
and, for scale, (s) the floor of any stateful filter: connection tracking on and one rule
per hook (`ct state established,related accept`), the least a table that knows replies from
requests costs.
The tables are switched with `nft -f` between measurements, rounds interleaved.
Throughput: iperf3 (one TCP stream, -t SECONDS, received bits/s); latency: 200 pings every
10 ms (average RTT). Printed per path and variant: medians over the rounds, and (c) relative
to (a) and (b) as the median of each round's ratio (the machine's speed drifts over minutes;
a round's variants run within seconds of each other). Goal: (c) at least 95% of (a)'s
throughput, and within noise of (b).
With --perf (Linux perf installed), three more iperf3 runs per path and variant are
sampled system-wide (medians printed): the share of all CPU samples spent in nftables' rules
and sets, in connection tracking, and in netfilter's hook calls, which does not drift with
the machine's speed; from them, each variant's throughput relative to (a) as the CPU allows
it (the rest of the work per byte being the same); the gap of (b) and (c) to the stateful
floor (s) in CPU points (goal: (c) at most 2 points above (s) on both paths); and the same
for (e): the table of (c) without its fast path (no `ct mark <generation> accept`, every
packet checked against the sets, as wgmesh's table was until 2026-12-07), to show what the
fast path saves.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
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


STATEFUL_FLOOR = """table inet wgmesh {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ct state established,related accept
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
    }
}
"""

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


# Kernel symbols by where the time goes: the table's rules and set lookups, connection
# tracking (and the NAT it carries), and netfilter's hook calls themselves.
SHARES = {"rules": re.compile(r"^(nft_|__nft_|pipapo)"),
          "conntrack": re.compile(r"conntrack|^nf_ct_|^nf_confirm|^nf_nat_|^__nf_ct"),
          "hooks": re.compile(r"^nf_hook")}


# Sampled runs per path and variant (interleaved), of which the median is printed.
PERF_RUNS = 3


def cpu_shares(lab: MeshLab, tmp: Path, path: tuple, seconds: int) -> dict[str, float]:
    """Percent of all CPU samples (every process, idle included) in each part of
    netfilter while one iperf3 run goes on."""
    data = tmp / "perf.data"
    # Sampled from 1 s to SECONDS - 1 s: inside the stream, past its start.
    rec = subprocess.Popen(["perf", "record", "-q", "-a", "-D", "1000", "-o", str(data), "--",
                            "sleep", str(max(seconds - 1, 2))], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    iperf(lab, *path, seconds)
    rec.wait()
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "symbol", "--stdio"],
                            capture_output=True, text=True, check=True).stdout
    out = dict.fromkeys(SHARES, 0.0)
    for pct, symbol in re.findall(r"^\s+([\d.]+)%\s+\[k\]\s+(\S+)", report, re.M):
        for part, pattern in SHARES.items():
            if pattern.search(symbol):
                out[part] += float(pct)
                break
    return out


def paired(xs: list[float], ys: list[float]) -> str:
    each = [x / y for x, y in zip(xs, ys, strict=True)]
    return f"{statistics.median(each):.1%} (rounds {min(each):.0%}-{max(each):.0%})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--perf", action="store_true",
                        help="also sample where the CPU time goes (needs Linux perf)")
    args = parser.parse_args()
    if not shutil.which("iperf3"):
        raise SystemExit("iperf3 is missing: ./dev.sh install (or apt-get install iperf3)")
    if args.perf and not shutil.which("perf"):
        raise SystemExit("perf is missing: apt-get install linux-perf")
    with fresh_lab("wgdp") as (lab, folder):
        return measure(lab, folder, args)


# The fast path of a table: the generation's accept, and the marking of a passed packet.
FAST_PATH = re.compile(r"^ +ct mark 0x[0-9a-f]{8} accept\n| ct mark set 0x[0-9a-f]{8}(?= accept)",
                       re.M)
VARIANTS = {"a": "(a) no table", "s": "(s) stateful floor", "b": "(b) lab policy",
            "c": "(c) +1,000 rules"}


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
            if variant in tables:
                lab.run(n, "nft", "-f", "-", stdin=tables[variant][n])
            if variant == "s":
                lab.run(n, "nft", "-f", "-", stdin=STATEFUL_FLOOR)
            if variant in "as" and n == "pub3":
                lab.run(n, "nft", "-f", "-", stdin=NAT_ONLY)  # the office LAN's replies
        if variant in tables:
            counts[variant] = {n: elements(lab, n) for n in ("pub2", "pub3")}

    for r in range(args.rounds):
        for variant in VARIANTS:
            load(variant)
            for name, (client, server, addr, port) in paths.items():
                got = results.setdefault((name, variant), {"gbit": [], "rtt": []})
                got["gbit"].append(iperf(lab, client, server, addr, port, args.seconds))
                got["rtt"].append(rtt(lab, client, addr))
                print(f"round {r + 1} {name} ({variant}): {got['gbit'][-1]:.3f} Gbit/s, "
                      f"RTT {got['rtt'][-1]:.3f} ms", flush=True)
    shares: dict[tuple[str, str], dict[str, float]] = {}
    if args.perf:
        tables["e"] = {}
        for n, text in tables["c"].items():
            tables["e"][n], found = FAST_PATH.subn("", text)
            if not found:  # the rules changed shape: (e) would silently measure (c)
                raise SystemExit(f"{n}'s table has no fast path to take out")
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(PERF_RUNS):
            for variant in [*VARIANTS, "e"]:
                load(variant)
                for name, path in paths.items():
                    samples.setdefault((name, variant), []).append(
                        cpu_shares(lab, tmp, path, args.seconds))
        shares = {key: {part: statistics.median(run[part] for run in runs) for part in SHARES}
                  for key, runs in samples.items()}
    load("b")  # leave the hosts as the run left them

    print(f"\nset elements: (b) pub2 {counts['b']['pub2']}, pub3 {counts['b']['pub3']}; "
          f"(c) pub2 {counts['c']['pub2']}, pub3 {counts['c']['pub3']}")
    print(f"{'path':<8} {'variant':<22} {'Gbit/s':>8} {'RTT ms':>8}"
          + ("   CPU samples: rules / conntrack / hooks" if shares else ""))
    for name in paths:
        gbit = {v: results[(name, v)]["gbit"] for v in VARIANTS}
        for v, label in VARIANTS.items():
            line = (f"{name:<8} {label:<22} {statistics.median(gbit[v]):>8.3f} "
                    f"{statistics.median(results[(name, v)]['rtt']):>8.3f}")
            if shares:
                part = shares[(name, v)]
                line += (f"   {part['rules']:.1f} % / {part['conntrack']:.1f} % / "
                         f"{part['hooks']:.1f} %")
            print(line)
        if shares:
            line = f"{name:<8} {'(e) (c), no fast path':<22} {'':>8} {'':>8}   "
            part = shares[(name, "e")]
            print(line + " / ".join(f"{part[k]:.1f} %" for k in SHARES))
            base = 100 - sum(shares[(name, "a")].values())
            print(f"{name:<8} throughput the CPU samples allow, relative to (a): " + ", ".join(
                f"({v}) {(100 - sum(shares[(name, v)].values())) / base:.1%}"
                for v in ("s", "b", "c", "e")))
            floor = sum(shares[(name, "s")].values())
            print(f"{name:<8} CPU points above the stateful floor (s) (goal for (c): at most "
                  "2): " + ", ".join(f"({v}) {sum(shares[(name, v)].values()) - floor:+.1f}"
                                     for v in ("b", "c", "e")))

        ratios = ", ".join(f"({x})/({y}) {paired(gbit[x], gbit[y])}"
                           for x, y in (("c", "a"), ("c", "b"), ("s", "a")))
        print(f"{name:<8} throughput, median of the rounds' ratios: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
