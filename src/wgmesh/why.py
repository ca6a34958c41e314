"""``wgmesh why SRC DST [PORT/PROTO]``: whether the policy, the path or a host refuses a flow.

From the compiled mesh alone: the policy's verdict (the rule that allows it, or none), and
the path the source's configuration gives the pair (lan, direct, relay via X, a subnet
router, or none: the policy relates them in neither direction, so neither holds the other
as a peer). With ``--live`` (playbooks/why.yml) the two hosts add what they see: drift from
their bundles, the pair's endpoint and latest handshake, a probe from the source, the drop
counters that moved while it ran, and the denied-flow log lines it left.
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass, field

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DROP_COUNTERS,
    PROTO_NAMES,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_monitor import flow_line
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import named_counters
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import (
    parse_dump,
    peer_names,
)
from wgmesh import grammar
from wgmesh.build import Build
from wgmesh.compile.resolve import Endpoint
from wgmesh.errors import escape
from wgmesh.policy import PROTOCOLS


@dataclass
class Flow:
    src: str
    dst: str
    proto: str = "icmp"
    port: int | None = None

    def text(self) -> str:
        return self.proto + (f"/{self.port}" if self.port is not None else "")


def parse_flow(src: str, dst: str, what: str | None) -> Flow:
    """``PORT/PROTO`` (``5432/tcp``), a bare ``PORT`` (TCP), ``icmp``, or nothing (ping)."""
    if not what:
        return Flow(src, dst)
    port_text, _, proto = what.partition("/")
    if not proto and not port_text.isdigit():
        port_text, proto = "", port_text
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise ValueError(f'"{proto}" is not a protocol (tcp, udp, sctp, icmp, ...)')
    if proto in ("tcp", "udp", "sctp"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f'"{what}" needs a port from 1 to 65535, as in 5432/{proto}')
        return Flow(src, dst, proto, int(port_text))
    if port_text:
        raise ValueError(f'{proto} has no port: write "{proto}"')
    return Flow(src, dst, proto)


def decide(b: Build, src: Endpoint, dst: Endpoint, named: tuple[bool, bool], proto_name: str,
           port) -> dict:
    """One pair's verdict (as ``wgmesh eval`` gives it); a node named stands for its address
    of the other side's family."""
    if src.addr is not None and dst.addr is not None and src.addr.version != dst.addr.version:
        if src.node and named[0]:
            src = b.resolution.endpoint_of(src.node, dst.addr.version)
        elif dst.node and named[1]:
            dst = b.resolution.endpoint_of(dst.node, src.addr.version)
        else:
            raise ValueError("src and dst are addresses of different families")
    proto = PROTOCOLS[proto_name]
    addr = src.addr if src.addr is not None else dst.addr
    if proto == 1 and addr is not None and addr.version == 6:
        proto = 58
    if proto in (6, 17, 132) and not isinstance(port, int):
        raise ValueError(f"{proto_name} needs a port number")
    verdict = b.evaluator.check(src, dst, proto, port)
    out = {"src": who(src), "dst": who(dst), "allow": verdict.allow, "rule": verdict.rule}
    if verdict.rule:
        out["line"] = verdict.line
    out["answered_by"] = verdict.answered_by
    if verdict.ssh_rule:
        out["ssh_rule"] = verdict.ssh_rule
    if verdict.note:
        out["note"] = verdict.note
    return out


def who(ep: Endpoint) -> str:
    return ep.node or ep.user or ",".join(sorted(ep.tags)) or str(ep.addr)


@dataclass
class Answer:
    flow: Flow
    verdict: dict
    path: str  # in words
    peer: str | None  # the node whose key carries the flow from the source (None: none)
    address: str  # the destination address probed
    live: list[str] = field(default_factory=list)  # what the hosts said (judge)
    refused: list[str] = field(default_factory=list)  # who refused, by judge

    @property
    def passes(self) -> bool:
        return self.verdict["allow"] and not self.refused

    def lines(self, policy_file: str) -> list[str]:
        v = self.verdict
        where = f" ({policy_file}:{v['line']})" if v.get("line") else ""
        if v["allow"]:
            policy = f"allows it: {v['rule']}{where}"
        elif v.get("note"):
            policy = f"denies it: {v['note']}"
        else:
            policy = "denies it: no rule allows it (default deny)"
        if v.get("answered_by") == "ssh":
            policy += f"; SSH policy answers port 22 here (ssh rule {v.get('ssh_rule')})"
        return [f"{self.flow.src} -> {self.flow.dst} ({self.address}) {self.flow.text()}",
                f"  policy: {policy}", f"  path:   {self.path}", *self.live]


def compiled(b: Build, flow: Flow) -> Answer:
    """The answer from the inputs alone."""
    res = b.resolution
    if flow.src not in res.index:
        raise ValueError(f'"{flow.src}" is not a node of the mesh')
    src = res.endpoint_of(flow.src)
    dst = res.endpoint_of(flow.dst)
    named = (True, flow.dst in res.index)
    verdict = decide(b, src, dst, named, flow.proto, flow.port)
    host = b.compiler.host(flow.src)
    address = str(dst.addr)
    peer = next((p for p in host.peers if p.name == flow.dst), None)
    if peer is None:  # a routed destination: the peer with the longest prefix that holds it
        routes = [(_route(p.allowed_ips, dst.addr), i) for i, p in enumerate(host.peers)]
        best = max((r for r in routes if r[0] >= 0), default=None)
        peer = host.peers[best[1]] if best else None
    if peer is None:
        path = (f"none: {flow.src} does not hold {flow.dst} as a peer (the policy relates "
                "them in neither direction)" if dst.node else
                f"none: no peer of {flow.src} routes {address}")
        return Answer(flow, verdict, path, None, address)
    how = {"lan": "direct, on the LAN", "direct": "direct"}.get(
        peer.connection, f"relayed via {peer.relay}" if peer.relay else peer.connection)
    if peer.name != flow.dst:
        how = f"through {peer.name} (it routes {address}), {how}"
    endpoint = f", endpoint {peer.endpoint}" if peer.endpoint else ", no endpoint (it calls in)"
    return Answer(flow, verdict, how + endpoint, peer.name, address)


def _route(allowed_ips: list[str], addr) -> int:
    """The length of the longest prefix (not a single address) among ``allowed_ips`` that
    holds ``addr``; -1 for none."""
    best = -1
    for text in allowed_ips:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == addr.version and net.prefixlen < addr.max_prefixlen and addr in net:
            best = max(best, net.prefixlen)
    return best


def _age(epoch: int, now: float) -> str:
    return "never" if not epoch else f"{int(now - epoch)} s ago"


def judge(answer: Answer, facts: dict[str, dict], now: float | None = None) -> None:
    """Lines from the two hosts' facts (playbooks/why.yml writes one JSON per host: drift,
    the peer's endpoint and handshake, counters before and after the probe, the probe's
    result, the denied flows logged), ending with who refused: the policy, a host (drift,
    its filter against the policy), the path, or the destination itself. Sets the answer's
    ``live`` lines and ``refused``."""
    now = time.time() if now is None else now
    flow, lines, drifted, dropped = answer.flow, [], [], []
    no_handshake = False
    for node in (flow.src, flow.dst):
        f = facts.get(node)
        if f is None:
            continue
        if f.get("drift"):
            lines.append(f"  {node}: DRIFTS from its bundle: " + "; ".join(f["drift"]))
            drifted.append(node)
        peer_name = answer.peer if node == flow.src else flow.src
        p = (f.get("peers") or {}).get(peer_name)
        if p is not None:
            path = f"{p['path']}, " if p.get("path") else ""
            lines.append(f"  {node}: peer {peer_name}, {path}endpoint "
                         f"{p.get('endpoint') or '(none)'}, handshake "
                         f"{_age(p.get('handshake', 0), now)}")
            no_handshake = no_handshake or not p.get("handshake")
        moved = {k: v - f.get("before", {}).get(k, 0) for k, v in f.get("after", {}).items()}
        moved = {k: v for k, v in moved.items() if v > 0}
        if moved:
            lines.append(f"  {node}: drops during the probe: "
                         + ", ".join(f"{k} +{v}" for k, v in sorted(moved.items())))
        if any(k in ("dropped_in", "dropped_out", "dropped_fwd") for k in moved):
            dropped.append(node)
        lines += [f"  {node}: logged: {d}" for d in f.get("denied", [])]
    probe = facts.get(flow.src, {}).get("probe")
    if probe is not None:
        result = {True: "answered", False: "no answer", None: "sent (UDP: no answer to wait for)"}
        lines.insert(0, f"  probe:  {probe['command']}: {result[probe['ok']]}")
    allow, passed = answer.verdict["allow"], probe is not None and probe["ok"] is True
    blame = [f"{n} does not run its bundle (site.yml repairs it)" for n in drifted]
    if not allow:
        blame.append("the policy" + (f", enforced by {' and '.join(dropped)}'s filter"
                                     if dropped else ""))
        if passed:
            blame.append("yet the probe passed: the hosts do not enforce the policy")
    elif probe is not None and probe["ok"] is False:
        if dropped:
            blame.append(f"{' and '.join(dropped)}'s filter, against the policy")
        elif answer.peer is None:
            blame.append("the path: the source holds no peer for the destination")
        elif no_handshake:
            blame.append(f"the path: no handshake with {answer.peer}")
        elif not blame:
            blame.append("the destination: no drop on either host and the path is up "
                         "(is the service listening?)")
    lines.append("  refused by: " + ("; ".join(blame) if blame else "nothing, it passes"))
    answer.live, answer.refused = lines, blame


# The probes run with the host's python3 (which Ansible needs anyway), not nc, which a
# minimal host may lack: a TCP connection (exit 0 when it is accepted), one UDP datagram.
TCP_PROBE = ("import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), "
             "timeout=2).close()")
UDP_PROBE = ("import socket, sys; socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else "
             "socket.AF_INET, socket.SOCK_DGRAM).sendto(b'wgmesh why', (sys.argv[1], "
             "int(sys.argv[2])))")


def probe_argv(flow: Flow, address: str) -> list[str]:
    """The source's probe: a TCP connection, one ping, one UDP datagram (no answer to wait
    for), or nothing (SCTP; its drops still show in the counters and the log)."""
    if flow.proto == "tcp":
        return ["python3", "-c", TCP_PROBE, address, str(flow.port)]
    if flow.proto in ("icmp", "ipv6-icmp", "icmpv6"):
        return ["ping", "-c", "1", "-W", "2", address]
    if flow.proto == "udp":
        return ["python3", "-c", UDP_PROBE, address, str(flow.port)]
    return []


def probe_text(probe: list[str]) -> str:
    """How the answer shows a probe."""
    if probe[:2] == ["python3", "-c"]:
        kind = "tcp connect" if probe[2] == TCP_PROBE else "udp datagram to"
        return f"{kind} {probe[3]} port {probe[4]}"
    return " ".join(probe)


def denied_record(d: object) -> bool:
    """A denied-flow record as the monitor writes it, whole: what a host sends is printed
    only if it is one (a host is not trusted to write to the operator's terminal)."""
    if not isinstance(d, dict) or set(d) != {"direction", "src", "src_node", "dst", "dst_node",
                                             "proto", "port", "time"}:
        return False
    port = d["port"]
    return (d["direction"] in ("in", "out", "fwd")
            and all(grammar.ip_address(d[k]) for k in ("src", "dst"))
            and all(d[k] is None or grammar.matches(grammar.NODE_NAME, d[k])
                    for k in ("src_node", "dst_node"))
            and (d["proto"] in PROTO_NAMES.values() or grammar.matches(grammar.DIGITS,
                                                                       d["proto"]))
            and (port is None or (isinstance(port, int) and not isinstance(port, bool)
                                  and 0 <= port <= 65535))
            and grammar.matches(grammar.TIMESTAMP, d["time"]))


def host_facts(raw: dict, wg_conf: str, probe: list[str]) -> dict:
    """What playbooks/why.yml brought back from one host, read: drift, peers by name, drop
    counters (packets) before and after, the denied flows logged meanwhile, the probe.
    Text the host wrote is escaped, records it sent are checked whole."""
    names = peer_names(wg_conf)
    peers = {}
    if raw.get("dump"):
        for key, p in parse_dump(raw["dump"])[1].items():
            if key in names:
                peers[names[key]] = {"endpoint": escape(p["endpoint"] or "") or None,
                                     "handshake": p["handshake"]}

    def counters(text):
        return {k: v[0] for k, v in named_counters(text).items()
                if k in DROP_COUNTERS} if text else {}

    def denied(text):
        records = json.loads(text) if text else []
        return records if isinstance(records, list) else []
    before = denied(raw.get("denied_before"))
    # The agent's paths: a relayed pair it moved to a direct path says so.
    agent = json.loads(raw["agent"]) if raw.get("agent") else {}
    for name, a in (agent.get("peers") or {}).items():
        if name in peers and a.get("path") == "direct (punched)":
            peers[name]["path"] = "direct (punched by the NAT agent)"
    new = [d for d in denied(raw.get("denied_after")) if d not in before]
    out = {"drift": [escape(str(d)) for d in raw.get("drift") or []], "peers": peers,
           "before": counters(raw.get("before")), "after": counters(raw.get("after")),
           "denied": [flow_line(d) if denied_record(d) else "(a malformed record, not shown)"
                      for d in new]}
    rc = raw.get("probe_rc")
    if probe and rc not in (None, ""):
        # A UDP probe has no answer to wait for: sent, not judged.
        out["probe"] = {"command": probe_text(probe),
                        "ok": None if probe[2:3] == [UDP_PROBE] else int(rc) == 0}
    return out
