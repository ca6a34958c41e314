"""Packets lost on flows a run does not touch, and how soon the flows it changes change.

    .venv/bin/python benchmarks/zero_drop.py [--scenarios none,policy,rotation,join-leave]

On a lab of its own (wgzd), after site.yml, pub1 (tag:web) keeps two flows to pub2
(tag:db) whose access never changes: a ping every 10 ms and a TCP stream (iperf3 at
50 Mbit/s, reported every 100 ms). Meanwhile one run of site.yml applies:
  none        nothing (no run: the reference for the same window);
  policy      a policy change: alice -> bob:8080 removed, carol -> tag:web:443 added;
  rotation    a key rotation of a third host (home2, -e wgmesh_rotate=[home2]);
  join-leave  cafe1 joins (it left in a run before) while pub3, the subnet router, leaves
              (out of mesh.yml).
Printed per scenario: the run's wall time; pings sent and lost; TCP intervals without data
and retransmissions; and for each changed flow (probed every 200 ms by a TCP connect from its
source) the seconds from the run's start until it took its new state for good.
Goal: 0 packets lost and no stalled interval on the untouched flows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from conftest import PY  # noqa: E402
from meshlab import (  # noqa: E402
    MeshLab,
    counters_moved,
    fresh_lab,
    path_counters,
    ping_losses,
)

SECONDS = 45
LEGACY = "198.51.100.130"  # the office machine behind the subnet router pub3
LISTEN = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(64)
    while True:
        s.accept()[0].close()
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
# The changed flows' ports on their destinations (pub2's 5432 is the iperf3 server's).
LISTEN_PORTS = {"pub1": ["443"], "pub2": ["22"], "home2": ["8080"]}
PROBER = """
import socket, sys, time
host, port, until = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
while time.time() < until:
    t = time.time()
    try:
        socket.create_connection((host, port), timeout=0.5).close(); ok = 1
    except OSError:
        ok = 0
    print(f"{t:.3f} {ok}", flush=True)
    time.sleep(max(0.0, 0.2 - (time.time() - t)))
"""


def settled_at(lines: str, want: bool, start: float) -> float | None:
    """Seconds after ``start`` from which every probe gave ``want`` (0: it already did;
    None: not by the end of the window)."""
    samples = [(float(t), ok == "1") for t, ok in (ln.split() for ln in lines.splitlines())]
    wrong = [t for t, ok in samples if ok != want and t >= start]
    if not wrong:
        return 0.0
    after = [t for t, _ in samples if t > max(wrong)]
    return after[0] - start if after else None


class Scenario:
    def __init__(self, lab: MeshLab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.mesh_file = lab.inventory / "mesh.yml"
        self.original = self.mesh_file.read_text()

    def address(self, node: str) -> str:
        return self.lab.plan()["hosts"][node]["addresses"][0]

    def prepare(self, name: str) -> tuple[list[str], list[tuple[str, str, int, bool]]]:
        """Arguments of the measured run, and the flows it changes: (src, dst, port, new)."""
        lab = self.lab
        if name == "none":
            return None, []
        if name == "policy":
            text = (REPO / "policies/lab.hujson").read_text()
            text = text.replace(
                '{"action": "accept", "src": ["alice@example.com"], "proto": "tcp", '
                '"dst": ["bob@example.com:8080"]},',
                '{"action": "accept", "src": ["carol@example.com"], "dst": ["tag:web:443"]},')
            text = text.replace('"home2:8080"]', '"tag:web:443"]').replace(
                '"deny": ["tag:web:443", "legacy:22"]}', '"deny": ["home2:8080", "legacy:22"]}')
            policy = self.tmp / "changed.hujson"
            policy.write_text(text)
            return (["-e", f"wgmesh_policy_file={policy}"],
                    [("cafe1", "pub1", 443, True), ("home1", "home2", 8080, False)])
        if name == "rotation":
            return (["-e", '{"wgmesh_rotate": ["home2"]}'], [("home2", "pub1", 443, True)])
        if name == "join-leave":
            without_cafe1 = re.sub(r"\n  cafe1:\n(?:    .*\n)*", "\n", self.original, count=1)
            self.mesh_file.write_text(without_cafe1)
            run = lab.playbook()
            assert run.returncode == 0, run.stdout[-3000:]
            self.mesh_file.write_text(
                re.sub(r"\n  pub3:\n(?:    .*\n)+", "\n", self.original, count=1))
            return [], [("cafe1", "pub2", 22, True), ("home1", "legacy", 22, False)]
        raise SystemExit(f"unknown scenario {name}")

    def restore(self) -> None:
        self.mesh_file.write_text(self.original)
        run = self.lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]


def measure(lab: MeshLab, scenario: Scenario, name: str) -> dict:
    args, changed = scenario.prepare(name)
    pub2 = scenario.address("pub2")
    # Addresses before the run: a leaving host's address is gone from the plan after it.
    targets = {dst: LEGACY if dst == "legacy" else scenario.address(dst)
               for _, dst, _, _ in changed}
    listeners = []
    for node, ports in LISTEN_PORTS.items():
        listeners.append(lab.spawn(node, LISTEN, scenario.address(node), *ports))
        assert listeners[-1].stdout.readline().strip() == "ready"
    before = path_counters(lab, ("pub1", "pub2"))
    iperf_srv = lab.start("pub2", ["iperf3", "-s", "-1", "-B", pub2, "-p", "5432"])
    time.sleep(0.5)
    # Recorded to a file: a pipe left unread during the run would pause ping at 64 KiB.
    ping = lab.record("pub1", ["ping", "-i", "0.01", "-w", str(SECONDS), pub2])
    stream = lab.start("pub1", ["iperf3", "-c", pub2, "-p", "5432", "-t", str(SECONDS - 2),
                                "-b", "50M", "-i", "0.1", "-J"])
    probers = [lab.start(src, [PY, "-c", PROBER, targets[dst], str(port), str(SECONDS)])
               for src, dst, port, _ in changed]
    try:
        time.sleep(2)
        start = time.time()
        if args is None:
            time.sleep(6)
        else:
            run = lab.playbook(*args)
            assert run.returncode == 0, run.stdout[-3000:]
        wall = time.time() - start
        ping_out = lab.recorded(ping, timeout=SECONDS + 20)
        stream_out, _ = stream.communicate(timeout=SECONDS + 20)
        probe_out = [p.communicate(timeout=SECONDS + 20)[0] for p in probers]
    finally:
        for p in (ping, stream, iperf_srv, *probers, *listeners):
            lab.stop(p)
    replies, lost = ping_losses(ping_out)
    # Where lost pings died: echoes sent and received at each end, and the path's drop and
    # error counters that moved (the stream's own losses move some of them too).
    moved = counters_moved(before, path_counters(lab, ("pub1", "pub2")))
    report = json.loads(stream_out)
    if "error" in report:
        raise SystemExit(f"iperf3: {report['error']}")
    intervals = [i["sum"]["bytes"] for i in report["intervals"]]
    return {
        "wall": wall, "pings": replies + len(lost), "lost": len(lost), "moved": moved,
        "empty_intervals": sum(1 for b in intervals[1:] if b == 0),
        "intervals": len(intervals), "retransmits": report["end"]["sum_sent"].get("retransmits"),
        "changed": [(f"{src} -> {dst}:{port} {'opens' if new else 'closes'}",
                     settled_at(out, new, start))
                    for (src, dst, port, new), out in zip(changed, probe_out, strict=True)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="none,policy,rotation,join-leave")
    args = parser.parse_args()
    with fresh_lab("wgzd") as (lab, folder):
        run = lab.playbook()
        assert run.returncode == 0, run.stdout[-3000:]
        lab.settle()
        scenario = Scenario(lab, folder)
        for name in args.scenarios.split(","):
            r = measure(lab, scenario, name)
            if name != "none":
                scenario.restore()
            lab.settle()
            print(f"{name}: run {r['wall']:.1f} s; untouched pub1 -> pub2: "
                  f"{r['lost']} of {r['pings']} pings lost, {r['empty_intervals']} of "
                  f"{r['intervals']} 100-ms TCP intervals without data, "
                  f"{r['retransmits']} retransmissions", flush=True)
            if r["lost"]:
                print("    counters that moved: " + (", ".join(
                    f"{k} +{v}" for k, v in r["moved"].items()) or "none"), flush=True)
            for what, t in r["changed"]:
                print(f"    {what}: " + (f"{t:.1f} s after the run started" if t is not None
                                         else "never within the window"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
