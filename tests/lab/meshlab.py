"""A lab with the mesh built on it, and the probes that check what really gets through."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from conftest import BIN, PY, REPO, LabSession, ansible_env, copy_topology

TCP_PORTS = (22, 80, 443, 5432, 8080)
UDP_PORTS = (53, 80, 5432)
# What ``MeshLab.connectivity`` probes on every pair of nodes.
KINDS = [("tcp", p) for p in TCP_PORTS] + [("udp", p) for p in UDP_PORTS] + [("icmp", None)]

LISTENER = """
import socket, sys, threading
addr = sys.argv[1]
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(b"ok", peer)
for p in %(tcp)r:
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
for p in %(udp)r:
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PROBE = """
import json, socket, subprocess, sys, threading
probes = json.loads(sys.argv[1])
out = {}
def run(key, ip, proto, port):
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=3); ok = s.recv(2) == b"ok"; s.close()
        elif proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b"x", (ip, port)); ok = s.recvfrom(10)[0] == b"ok"; s.close()
        else:
            ok = subprocess.run(["ping", "-c1", "-W3", ip], capture_output=True).returncode == 0
    except OSError:
        ok = False
    out[key] = ok
threads = [threading.Thread(target=run, args=p) for p in probes]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


class MeshLab(LabSession):
    """The default lab under another name, with its mesh inventory beside its topology."""

    def __init__(self, tmp: Path, name: str,
                 topology: Path = REPO / "inventories/lab/topology.yml",
                 mesh: str | None = None):
        copy_topology(tmp, topology, name)
        if mesh is None:
            mesh = (REPO / "inventories/lab/mesh.yml").read_text()
        mesh = mesh.replace("../../policies/", f"{REPO}/policies/")
        mesh = mesh.replace("/run/wgmesh-lab/wgl/", f"/run/wgmesh-lab/{name}/")
        (tmp / "mesh.yml").write_text(mesh)
        super().__init__(tmp / "topology.yml")
        self.inventory = tmp
        self.mesh_nodes = list(yaml.safe_load(mesh)["nodes"])

    def playbook(self, *args: str, play: str | Path = "site.yml",
                 timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(play), *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ansible_env())

    def ansible(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ansible"), "-i", str(self.inventory), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=ansible_env())

    def wgmesh(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "wgmesh"), *args, "-i", str(self.inventory)],
                              capture_output=True, text=True, input=stdin)

    def mesh_address(self, node: str) -> str:
        plan = json.loads(self.wgmesh("render", "--all", "--json").stdout)
        return plan["hosts"][node]["addresses"][0]

    def plan(self) -> dict:
        out = self.wgmesh("render", "--all", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def start_listeners(self, addresses: dict[str, str]) -> list[subprocess.Popen]:
        procs = []
        for node, addr in addresses.items():
            code = LISTENER % {"tcp": TCP_PORTS, "udp": UDP_PORTS}
            p = self.spawn(node, code, addr)
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            procs.append(p)
        return procs

    def reversing_listener(self, node: str, address: str, port: int,
                           count: int) -> subprocess.Popen:
        """A TCP listener on ``node`` that answers ``count`` connections with their first
        message reversed (marker tests); returned once it listens."""
        p = self.spawn(node, (
            "import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{address}', {port})); s.listen(); print('ready', flush=True)\n"
            f"for _ in range({count}):\n"
            "    c, _ = s.accept(); data = c.recv(200); c.sendall(data[::-1]); c.close()\n"))
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        return p

    def send_marker(self, src: str, address: str, port: int, marker: str) -> str:
        """``marker`` over TCP from ``src``; the answer of a reversing listener."""
        return self.python(src, f"""
import socket
s = socket.create_connection(("{address}", {port}), timeout=5)
s.sendall(b"{marker}"); print(s.recv(200).decode())
""").stdout.strip()

    def probe(self, src: str, probes: list[tuple[str, str, str, int | None]]) -> dict:
        out = self.run(src, PY, "-c", PROBE, json.dumps(probes), timeout=60)
        return json.loads(out.stdout)

    def probe_all(self, plan: dict[str, list]) -> dict[str, dict]:
        """Probe from every source at once; plan: src -> [(key, ip, proto, port)]."""
        results: dict[str, dict] = {}
        threads = [threading.Thread(target=lambda s=s, p=p: results.__setitem__(
            s, self.probe(s, p))) for s, p in plan.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def connectivity(self) -> tuple[list[dict], list[dict], dict[str, dict]]:
        """Every node probes every other node's mesh address on each of ``KINDS`` at once,
        and ``wgmesh eval`` judges each probe: (queries, verdicts, results), results by
        source, then "dst/proto/port"."""
        plan = self.plan()
        addr = {n: plan["hosts"][n]["addresses"][0] for n in self.mesh_nodes}
        listeners = self.start_listeners(addr)
        try:
            probes = {s: [(f"{d}/{proto}/{port}", addr[d], proto, port) for d in addr
                          if d != s for proto, port in KINDS] for s in addr}
            results = self.probe_all(probes)
        finally:
            for p in listeners:
                self.stop(p)
        queries = [{"src": s, "dst": key.split("/")[0], "proto": proto,
                    **({"port": port} if port else {})}
                   for s, ps in probes.items() for key, _ip, proto, port in ps]
        out = self.wgmesh("eval", stdin="\n".join(json.dumps(q) for q in queries))
        verdicts = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(verdicts) == len(queries), out.stderr
        return queries, verdicts, results

    @staticmethod
    def mismatches(queries: list[dict], verdicts: list[dict], results: dict) -> list[str]:
        """The probes whose outcome is not the policy's verdict."""
        out = []
        for q, v in zip(queries, verdicts, strict=True):
            key = f"{q['dst']}/{q['proto']}/{q.get('port')}"
            if results[q["src"]][key] != v["allow"]:
                out.append(f"{q['src']} -> {key}: probe {results[q['src']][key]}, "
                           f"policy {v['allow']}")
        return out

    def settle(self, timeout: float = 15) -> None:
        """Wait until every tunnel that keeps itself up (a peer with a persistent keepalive,
        on wg0 or a relay client's wg0-hop) has had a handshake. Hosts apply in parallel, so
        a host's first handshake can go out before its peer has its key or its interface;
        WireGuard retries only after 5 s, and a probe in between would wait for that retry.
        A relay's own hop peers are passive (no keepalive): they come up when their client's
        do, and a client that is no lab host (a phone) never would."""
        deadline = time.monotonic() + timeout
        for node in self.mesh_nodes:
            while self.unsettled(node) and time.monotonic() < deadline:
                time.sleep(0.2)

    def unsettled(self, node: str) -> list[str]:
        """The keepalive tunnels of ``node`` that have had no handshake yet."""
        dump = self.run(node, "wg", "show", "all", "dump").stdout
        waiting = []
        for line in dump.splitlines():
            fields = line.split("\t")
            if len(fields) != 9:  # an interface's own line
                continue
            interface, key, handshake, keepalive = fields[0], fields[1], fields[5], fields[8]
            if handshake == "0" and keepalive != "off":
                waiting.append(f"{interface} {key}")
        return waiting

    def counter(self, node: str, name: str) -> int:
        out = self.run(node, "nft", "list", "counter", "inet", "wgmesh", name).stdout
        return int(re.search(r"packets (\d+)", out).group(1))


# A lab host's reboot, as far as wgmesh is concerned. First what a reboot loses: the
# ruleset, wgmesh's interfaces (their wireguard-go processes, addresses and routes go with
# them) and every routing rule but the kernel's own; then what systemd's wg-quick@ units do
# at boot, each on its own: `wg-quick up` for each interface whose file a bundle wrote.
# Files, keys, sysctl settings and the names block stay, as on a disk.
REBOOT = r"""
nft flush ruleset
for i in wg0-hop wg0; do ip link delete dev "$i" 2>/dev/null || true; done
for v in 4 6; do
  ip -$v rule show | while read -r prio _; do
    case ${prio%:} in 0|32766|32767) ;; *) ip -$v rule delete priority "${prio%:}" ;; esac
  done
done
while pgrep -x wireguard-go >/dev/null; do sleep 0.1; done
rc=0
for i in wg0-hop wg0; do
  [ ! -e "/etc/wireguard/$i.conf" ] || wg-quick up "$i" || rc=1
done
exit $rc
"""


def reboot(mesh: LabSession, nodes: list[str]) -> dict[str, subprocess.CompletedProcess]:
    """``REBOOT`` on ``nodes`` at once; what each said, by node (not checked here)."""
    done: dict[str, subprocess.CompletedProcess] = {}
    threads = [threading.Thread(target=lambda n=n: done.__setitem__(
        n, mesh.run(n, "sh", "-c", REBOOT, check=False, timeout=60))) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def built_mesh(tmp_path_factory, folder: str, name: str,
               topology: Path = REPO / "inventories/lab/topology.yml"):
    """The body of a module's lab fixture: its own lab, site.yml run on it, taken down
    after the module."""
    lab = MeshLab(tmp_path_factory.mktemp(folder), name, topology=topology)
    lab.lab.down()
    lab.lab.up()
    run = lab.playbook()
    assert run.returncode == 0, run.stdout[-3000:]
    lab.settle()
    yield lab
    lab.lab.down()


@contextlib.contextmanager
def wrapped(mesh, node: str, tool: str, script: str):
    """``script`` in front of ``tool`` on a host while the block runs (a bind mount over the
    tool; the real one is /run/<tool>.real, and a script that acts once marks it with
    /run/<tool>-once). Injects faults without touching the machine's own files."""
    path = mesh.run(node, "sh", "-c", f"command -v {tool}").stdout.strip()
    mesh.run(node, "cp", path, f"/run/{tool}.real")
    mesh.run(node, "sh", "-c", f"cat > /run/{tool}-wrap && chmod 755 /run/{tool}-wrap",
             stdin=script)
    mesh.run(node, "mount", "--bind", f"/run/{tool}-wrap", path)
    try:
        yield
    finally:
        mesh.run(node, "umount", path)
        mesh.run(node, "rm", "-f", f"/run/{tool}.real", f"/run/{tool}-wrap",
                 f"/run/{tool}-once")


@contextlib.contextmanager
def fresh_lab(name: str):
    """The default lab under its own name, up, in a temporary folder (its inventory in
    ``<folder>/inv``; the rest of the folder is free for policies); taken down afterwards.
    For benchmarks: tests use ``built_mesh``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "inv").mkdir()
        lab = MeshLab(folder / "inv", name)
        lab.lab.down()
        lab.lab.up()
        try:
            yield lab, folder
        finally:
            lab.lab.down()


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> host -> {ok, changed, failed, ...}."""
    out = {}
    for host, rest in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
    return out


__all__ = ["MeshLab", "built_mesh", "fresh_lab", "reboot", "recap", "sys", "wrapped"]


def ping_losses(output: str) -> tuple[int, list[int]]:
    """`ping` output (without -q) -> (replies, sequence numbers lost). Only gaps below the
    last reply count: the request in flight when ping is stopped has had no time to be
    answered, and is not a loss."""
    seqs = {int(n) for n in re.findall(r"icmp_seq=(\d+) ttl=", output)}
    return len(seqs), sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)


# Where a ping can die between two hosts, as each host counts it: IP discards and packets
# without a route, ICMP echoes in and out, the tunnel's UDP socket (no socket bound, buffers
# full), the WireGuard interface's drops and wgmesh's drop counters; and, for the whole
# machine, packets dropped because a CPU's input backlog was full (softnet_stat's second
# column, the same in every namespace).
SNMP = {"Ip": ("InDiscards", "OutDiscards", "OutNoRoutes"),
        "Icmp": ("InEchos", "InEchoReps", "OutEchos", "OutEchoReps"),
        "Udp": ("NoPorts", "InErrors", "RcvbufErrors", "SndbufErrors")}
PATH_COUNTERS = ("cat /proc/net/snmp; ip -s -j link show dev wg0; "
                 "nft list counters table inet wgmesh 2>/dev/null; "
                 "sed 's/^/softnet /' /proc/net/softnet_stat; true")


def path_counters(mesh, nodes: tuple[str, ...]) -> dict[str, int]:
    """Counters of the layers a flow crosses on each of ``nodes``, by "node layer.name"."""
    out = {}
    for node in nodes:
        text = mesh.run(node, "sh", "-c", PATH_COUNTERS).stdout
        for proto, names in SNMP.items():
            head, values = re.findall(rf"^{proto}: (.*)$", text, re.M)[:2]
            row = dict(zip(head.split(), values.split(), strict=True))
            out.update({f"{node} {proto}.{n}": int(row[n]) for n in names})
        link = json.loads(re.search(r"^\[.*\]$", text, re.M).group(0))[0]["stats64"]
        out[f"{node} wg0.rx_dropped"] = link["rx"]["dropped"]
        out[f"{node} wg0.tx_dropped"] = link["tx"]["dropped"]
        for name, packets in re.findall(r"counter (\w+) \{\s*packets (\d+)", text):
            out[f"{node} nft.{name}"] = int(packets)
        out["machine softnet.dropped"] = sum(
            int(column, 16) for column in re.findall(r"^softnet \S+ (\S+)", text, re.M))
    return out


def counters_moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The ``path_counters`` that changed between two readings, by how much."""
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


# A table of the tests' own (never wgmesh's) that asks nftables to trace a flow's packets
# through every hook and rule, wgmesh's included: `nft monitor trace` then prints each
# packet's headers (ICMP sequence numbers among them) and every verdict it met.
TRACE_TABLE = """table inet wgmesh_trace
delete table inet wgmesh_trace
table inet wgmesh_trace {{
    chain pre {{ type filter hook prerouting priority raw - 10; {match} meta nftrace set 1; }}
    chain out {{ type filter hook output priority raw - 10; {match} meta nftrace set 1; }}
}}
"""


@contextlib.contextmanager
def traced(mesh, nodes: tuple[str, ...], match: str):
    """Trace the packets ``match`` (nft expressions) selects on ``nodes`` while the block
    runs; the yielded dict then holds each node's `nft monitor trace` output."""
    procs = {}
    traces: dict[str, str] = {}
    try:
        for node in nodes:
            procs[node] = mesh.record(node, ["nft", "monitor", "trace"])
        time.sleep(0.3)  # the monitor listens before the first packet is marked
        for node in nodes:
            mesh.run(node, "nft", "-f", "-", stdin=TRACE_TABLE.format(match=match))
        yield traces
    finally:
        for node in procs:
            mesh.run(node, "nft", "delete", "table", "inet", "wgmesh_trace", check=False)
        for node, proc in procs.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            traces[node] = mesh.recorded(proc, timeout=10)


def echoes(a: str, b: str) -> str:
    """The nft match of the ICMP echoes between two IPv4 addresses, for ``traced``."""
    return f"ip saddr {{ {a}, {b} }} ip daddr {{ {a}, {b} }} meta l4proto icmp"


def echo_trace(traces: dict[str, str], seq: int) -> str:
    """Every traced event of the ICMP echoes (request and reply) with this sequence
    number, node by node: where a lost ping went, hook by hook and rule by rule."""
    out = []
    for node, text in traces.items():
        ids = set(re.findall(rf"^trace id (\w+) .*icmpv?6? sequence {seq}\b", text, re.M))
        lines = [line for line in text.splitlines()
                 if line.split()[2:3] and line.split()[2] in ids]
        out.append(f"{node}: " + (" | ".join(lines) if lines else "no traced packet"))
    return "\n".join(out)


def check_untouched_flow(output: str, run_started: float,
                         counters: tuple[dict, dict] | None = None,
                         traces: dict[str, str] | None = None) -> None:
    """The pings (`ping -D`) of a flow a run does not touch: at least 500 replies and none
    lost. A loss fails with its time into the run, the path's counters that moved
    (``path_counters`` before and after) and the lost echo's trace, which say where it died."""
    replies, lost = ping_losses(output)
    stamps = {int(n): float(t) for t, n in
              re.findall(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+) ttl=", output, re.M)}
    # A lost ping's time: that of the last reply before it.
    when = [f"seq {n} at +{stamps[max(k for k in stamps if k < n)] - run_started:.2f} s "
            "into the run" for n in lost if any(k < n for k in stamps)]
    moved = ""
    if counters:
        moved = "; counters: " + ", ".join(
            f"{k} +{v}" for k, v in counters_moved(*counters).items())
    # What ping itself said of a request it sent (an ICMP error back, a refused send).
    said = [line for line in output.splitlines()
            if ("icmp_seq=" in line and " ttl=" not in line) or "sendmsg" in line][:3]
    if said:
        moved += "; ping said: " + " | ".join(said)
    for n in lost if traces else ():
        moved += f"; trace of seq {n}:\n{echo_trace(traces, n)}"
    assert replies > 500 and not lost, (
        f"{replies} replies, {len(lost)} lost on an untouched flow: {', '.join(when)}{moved}")


def snapshot(mesh, node: str) -> dict[str, str]:
    """What a run could change on a host: its files, running peers and key, loaded table
    (without counters) and the bundle it is recorded as running."""
    files = mesh.run(node, "sh", "-c", "cat /etc/wireguard/wg0.conf /etc/wireguard/wg0-hop.conf "
                     "/etc/wgmesh/nftables.nft /etc/hosts 2>/dev/null; true").stdout
    peers = mesh.run(node, "sh", "-c", "wg show wg0 dump | tail -n +2 | cut -f1,4 | sort; "
                     "wg show wg0 public-key").stdout
    table = re.sub(r"packets \d+ bytes \d+", "",
                   mesh.run(node, "nft", "list", "table", "inet", "wgmesh").stdout)
    state = json.loads(mesh.run(node, "cat", "/var/lib/wgmesh/state.json").stdout)
    return {"files": files, "peers": peers, "table": table, "hash": state["hash"]}


def intended(mesh, policy) -> dict[str, str]:
    """The bundle hash each host should run under a policy (compiled here, as the run does)."""
    from wgmesh.build import build

    b = build(mesh.inventory, policy, run_tests=False)
    return {n: b.bundle(n)["hash"]
            for n in b.resolution.names if b.mesh.nodes[n].managed}


def running(mesh, node: str) -> str:
    """The bundle hash a host is recorded as running."""
    return json.loads(mesh.run(node, "cat", "/var/lib/wgmesh/state.json").stdout)["hash"]


def lockfile(mesh) -> Path:
    return Path(re.search(r"^lockfile: (.+)$", (mesh.inventory / "mesh.yml").read_text(),
                          re.M).group(1))


def policy_with(mesh, tmp_path, old: str, new: str):
    """The lab's policy (the one its mesh.yml names) with one change, written outside the
    inventory (not a source)."""
    named = yaml.safe_load((mesh.inventory / "mesh.yml").read_text())["policy"]
    text = (mesh.inventory / named).read_text()
    assert old in text
    path = tmp_path / "changed.hujson"
    path.write_text(text.replace(old, new))
    return path


GIT_URL = "git://192.0.2.80/mesh.git"


def serve_git(lab) -> None:
    """`git daemon` on the lab host web (GIT_URL), for pull mode."""
    lab.run("web", "sh", "-c", "mkdir -p /var/lib/git && git init -q --bare -b main "
            "/var/lib/git/mesh.git && git daemon --reuseaddr --detach --export-all "
            "--base-path=/var/lib/git --listen=192.0.2.80 --pid-file=/run/git-daemon.pid")


def publish(lab, repo: Path) -> None:
    """The repository's main branch to web's git daemon (a bundle through stdin)."""
    data = subprocess.run(["git", "-C", str(repo), "bundle", "create", "-", "main"],
                          capture_output=True, check=True).stdout
    subprocess.run(lab.lab.exec_argv("web", [
        "sh", "-c", "cat > /tmp/push.bundle && git -C /var/lib/git/mesh.git fetch -q --force "
        "/tmp/push.bundle main:main"]), input=data, check=True, timeout=30)
