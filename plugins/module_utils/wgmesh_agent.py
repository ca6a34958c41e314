"""The wgmesh agent: NAT traversal on one host, with no coordination server.

Standard library only: wgmesh_apply installs it (``agent.pyz``, a zip of these module_utils,
as the monitor is) on hosts whose bundle has an ``agent`` part (docs/relay.md), and
``wgmesh agent`` runs the same code.

- On a lighthouse it answers its clients, over the mesh only (the agent port on the mesh
  address, bound to the mesh interface; the host's filter passes that port only between the
  agents the bundle names): the public address and port it sees for the asker, and for the
  asker's relayed peers (only those the bundle pairs it with) with their own NAT verdicts.
- On a node behind NAT it asks every lighthouse, compares what two of them see (the same
  address and port: a NAT that maps the same way for every destination, worth punching; two
  different ones: a symmetric NAT, stay on the relay), and moves each relayed peer whose
  NAT allows it to the peer's mapped address, at about the same time as the peer does
  (a ``punch`` message over the relayed path starts both). A path counts as direct once the
  peer's agent answers over it while WireGuard keeps the endpoint (a relayed packet would
  move it back). When probes over the direct path stop being answered, the peer goes back to
  its relay endpoint and the agent tries again later, with backoff.

It changes only the endpoint of wg0 peers its bundle lists, and only to a lighthouse-reported
address or the bundle's relay endpoint: never keys, allowed IPs, routes or the filter. Every
value received passes the strict checks below; WireGuard itself refuses packets from anyone
without the peer's key, so a wrong address costs the pair its direct path, nothing more.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import time

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import KEY_TEXT
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import write_atomic

STATE_DIR = "/var/lib/wgmesh"
MAX_DATAGRAM = 1400
ASK_EVERY = 1.0  # while a peer is not direct
ASK_IDLE = 10.0  # once every peer is direct or never can be
SEEN_FRESH = ASK_IDLE + 5.0  # a lighthouse answer older than this is not used
PEER_ALIVE = ASK_IDLE + 5.0  # a peer that asked a lighthouse this recently runs its agent
ATTEMPT = 6.0  # a punch that has not worked by then is given up
STABLE = 0.8  # the endpoint must hold this long, with an answer, to count as direct
PROBE_TRYING = 0.2
PROBE_DIRECT = 1.0
DEAD = 3.5  # no answer over the direct path for this long: back to the relay
BACKOFF = (10.0, 300.0)
ASKS_PER_CLIENT = 10  # per 5 s, on a lighthouse


def endpoint(text: object) -> str | None:
    """A WireGuard endpoint, canonical and public-looking: ``a.b.c.d:port`` or
    ``[v6]:port``; anything else (names, scopes, mesh or special addresses) is refused."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    m = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})|\[([0-9a-f:]{2,39})\]:(\d{1,5})", text)
    if not m:
        return None
    host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if str(addr) != host or not 0 < int(port) < 65536 or str(int(port)) != port:
        return None
    if (addr.is_loopback or addr.is_multicast or addr.is_unspecified or addr.is_link_local
            or addr.is_reserved or addr in CGNAT or (addr.version == 6 and addr in ULA)):
        return None
    return text


CGNAT = ipaddress.ip_network("100.64.0.0/10")  # the default mesh pool
ULA = ipaddress.ip_network("fc00::/7")  # mesh and hop pools


def check_bundle_part(part: object) -> dict:
    """The bundle's agent part, checked whole; raises ValueError."""
    if not isinstance(part, dict):
        raise ValueError("no agent part")
    port = part.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError("bad port")
    addr = part.get("address")
    ipaddress.IPv4Address(addr)
    for lh in part.get("lighthouses", []):
        ipaddress.IPv4Address(lh["address"])
        if not KEY_TEXT.fullmatch(lh["public_key"]):
            raise ValueError("bad lighthouse key")
    for p in part.get("punch", []):
        ipaddress.IPv4Address(p["address"])
        if not KEY_TEXT.fullmatch(p["public_key"]):
            raise ValueError("bad peer key")
        if not re.fullmatch(r"\[[0-9a-f:]+\]:\d+|[0-9.]+:\d+", p["relay_endpoint"]):
            raise ValueError("bad relay endpoint")
    for a, c in part.get("clients", {}).items():
        ipaddress.IPv4Address(a)
        if not all(KEY_TEXT.fullmatch(k) for k in [c["public_key"], *c["peers"]]):
            raise ValueError("bad client key")
    return part


class WireGuard:
    """The few wg(8) calls the agent makes."""

    def __init__(self, iface: str):
        self.iface = iface

    def endpoints(self) -> dict[str, str | None]:
        out = subprocess.run(["wg", "show", self.iface, "endpoints"], capture_output=True,
                             text=True, check=False).stdout
        found = {}
        for line in out.splitlines():
            key, _, ep = line.partition("\t")
            found[key] = None if ep in ("", "(none)") else ep
        return found

    def set_endpoint(self, key: str, ep: str) -> None:
        subprocess.run(["wg", "set", self.iface, "peer", key, "endpoint", ep], check=False,
                       capture_output=True)


class Peer:
    def __init__(self, spec: dict):
        self.name, self.key, self.address = spec["name"], spec["public_key"], spec["address"]
        self.relay_endpoint, self.relay = spec["relay_endpoint"], spec.get("relay")
        self.state = "relay"  # relay | trying | direct
        self.target: str | None = None
        self.since = time.time()
        self.attempts = self.upgrades = self.fallbacks = 0
        self.last_event: tuple[str, float] | None = None
        self.next_try = 0.0
        self.backoff = BACKOFF[0]
        self.started = self.stable_since = self.last_answer = self.last_probe = 0.0
        self.seq = 0
        self.punch_asked = 0.0  # when the peer last asked us to punch with it
        self.kick_until = 0.0  # probes over the relay until then, after a fallback
        # From a lighthouse: endpoint, the peer's NAT verdict, when the peer last asked it,
        # which lighthouse, and when that answer came.
        self.candidate: dict | None = None


class Agent:
    def __init__(self, state_dir: str, iface: str | None = None, wg: WireGuard | None = None):
        self.state_dir = state_dir
        self.bundle_path = os.path.join(state_dir, "bundle.json")
        self.status_path = os.path.join(state_dir, "agent.json")
        self.mtime = 0.0
        self.part: dict = {}
        self.iface = iface
        self.wg = wg
        self.sock: socket.socket | None = None
        self.peers: dict[str, Peer] = {}  # key -> Peer
        self.by_address: dict[str, Peer] = {}
        self.seen: dict[str, tuple[str, float]] = {}  # lighthouse address -> (you, when)
        self.next_ask = 0.0
        # Lighthouse: client key -> (verdict, when it last asked); rate limits per address.
        self.verdicts: dict[str, tuple[str, float]] = {}
        self.asks: dict[str, list[float]] = {}
        self.endpoint_cache: tuple[float, dict] = (0.0, {})
        self.live_at = 0.0  # when wg(8) was last asked for the peers' endpoints
        self.status_text, self.status_at = "", 0.0

    # -- bundle ------------------------------------------------------------------------
    def load(self) -> bool:
        """(Re)read the bundle when it changed; False while there is nothing to do."""
        try:
            mtime = os.stat(self.bundle_path).st_mtime
        except OSError:
            if self.mtime == 0.0:
                log(f"waiting for {self.bundle_path} (wgmesh_apply writes it)")
                self.mtime = -1.0
            return False
        if mtime == self.mtime:
            return bool(self.part)
        self.mtime = mtime
        try:
            with open(self.bundle_path) as f:
                bundle = json.load(f)
            part = check_bundle_part(bundle.get("agent"))
            iface = bundle["interface"]
            if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", iface):
                raise ValueError("bad interface")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"no usable agent part in {self.bundle_path} ({exc}): idle")
            self.part = {}
            self.close()
            return False
        if self.iface != iface or not self.sock or part["address"] != self.part.get("address") \
                or part["port"] != self.part.get("port"):
            self.close()
            self.iface = iface
            self.wg = self.wg or WireGuard(iface)
            self.open(part["address"], part["port"])
        self.part = part
        old = self.peers
        self.peers = {}
        live = None
        for spec in part.get("punch", []):
            peer = old.get(spec["public_key"])
            if peer is None:
                peer = Peer(spec)
                live = self.wg.endpoints() if live is None else live
                have = live.get(peer.key)
                if have and have != spec["relay_endpoint"] and endpoint(have):
                    # Direct already (an agent restarted): kept while its probes are answered.
                    peer.state, peer.target = "direct", have
            peer.relay_endpoint, peer.relay = spec["relay_endpoint"], spec.get("relay")
            self.peers[peer.key] = peer
        self.by_address = {p.address: p for p in self.peers.values()}
        log(f"bundle {bundle.get('hash')}: {len(part.get('lighthouses', []))} lighthouse(s), "
            f"{len(self.peers)} relayed peer(s), {len(part.get('clients', {}))} client(s)")
        return True

    def open(self, address: str, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Only what arrives over the mesh interface: the sender's mesh address is then
        # vouched for by WireGuard (its key) and the filter (no forged mesh addresses).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.iface.encode())
        for _ in range(50):  # the interface and its address may still be coming up
            try:
                s.bind((address, port))
                break
            except OSError:
                time.sleep(0.2)
        else:
            s.bind((address, port))
        s.setblocking(False)
        self.sock = s

    def close(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None

    # -- the loop ----------------------------------------------------------------------
    def run(self, once: float | None = None) -> None:
        end = time.monotonic() + once if once else None
        last_status = 0.0
        while end is None or time.monotonic() < end:
            if not self.load():
                time.sleep(1.0)
                continue
            now = time.time()
            ready = select.select([self.sock], [], [], 0.1)[0]
            if ready:
                self.receive()
            self.tick(time.time())
            if now - last_status >= 1.0:
                self.write_status()
                last_status = now

    def send(self, address: str, message: dict) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        # No route yet, buffer full: the next tick sends again.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, (address, self.part["port"]))

    def receive(self) -> None:
        for _ in range(64):
            try:
                data, (src, sport) = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if sport != self.part["port"] or len(data) > MAX_DATAGRAM:
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self.handle(src, msg, time.time())

    def handle(self, src: str, msg: dict, now: float) -> None:
        kind = msg.get("t")
        clients = self.part.get("clients", {})
        if kind == "ask" and src in clients:
            self.answer(src, clients[src], msg, now)
        elif kind == "seen" and src in {lh["address"] for lh in self.part["lighthouses"]}:
            self.learn(src, msg, now)
        elif src in self.by_address:
            peer = self.by_address[src]
            if kind == "probe" and isinstance(msg.get("n"), int):
                self.send(src, {"t": "ack", "n": msg["n"]})
                peer.last_answer = now
            elif kind == "ack":
                peer.last_answer = now
            elif kind == "punch" and peer.state == "relay" and now - peer.started > ATTEMPT:
                # Started in tick() as soon as a fresh lighthouse answer allows it.
                log(f"{peer.name} asks to punch")
                peer.punch_asked = now
                self.next_ask = min(self.next_ask, now)

    # -- lighthouse --------------------------------------------------------------------
    def answer(self, src: str, client: dict, msg: dict, now: float) -> None:
        recent = [t for t in self.asks.get(src, []) if now - t < 5.0]
        if len(recent) >= ASKS_PER_CLIENT:
            return  # rate-limited: a client asks about once a second
        self.asks[src] = [*recent, now]
        verdict = msg.get("verdict")
        if verdict in ("cone", "symmetric", "single", "pending"):
            self.verdicts[client["public_key"]] = (verdict, now)
        eps = self.endpoints(now)
        you = eps.get(client["public_key"])
        allowed = set(client["peers"])
        want = msg.get("want")
        peers = {}
        if isinstance(want, list):
            for key in want[:16]:
                if not isinstance(key, str) or key not in allowed:
                    continue  # need to know: only the peers the bundle pairs it with
                ep = endpoint(eps.get(key))
                verdict_of = self.verdicts.get(key)
                if ep and verdict_of:
                    peers[key] = {"endpoint": ep, "verdict": verdict_of[0],
                                  "age": round(now - verdict_of[1], 1)}
        self.send(src, {"t": "seen", "you": endpoint(you), "peers": peers})

    def endpoints(self, now: float) -> dict:
        if now - self.endpoint_cache[0] > 0.3:
            self.endpoint_cache = (now, self.wg.endpoints())
        return self.endpoint_cache[1]

    # -- node behind NAT ----------------------------------------------------------------
    def verdict(self, now: float) -> str:
        views = {you for you, when in self.seen.values() if now - when < SEEN_FRESH and you}
        answered = sum(1 for _, when in self.seen.values() if now - when < SEEN_FRESH)
        if len(views) > 1:
            return "symmetric"
        if len(self.part["lighthouses"]) == 1:
            return "single" if answered else "pending"
        return "cone" if answered >= 2 else "pending"

    def learn(self, src: str, msg: dict, now: float) -> None:
        you = endpoint(msg.get("you"))
        self.seen[src] = (you or "", now)
        peers = msg.get("peers")
        if not isinstance(peers, dict):
            return
        for key, info in peers.items():
            peer = self.peers.get(key)
            if peer is None or not isinstance(info, dict):
                continue
            ep = endpoint(info.get("endpoint"))
            age = info.get("age")
            if ep and info.get("verdict") in ("cone", "symmetric", "single", "pending") \
                    and isinstance(age, (int, float)) and 0 <= age < 3600:
                peer.candidate = {"endpoint": ep, "verdict": info["verdict"],
                                  "when": now - age, "from": src, "received": now}

    def can_punch(self, peer: Peer, now: float) -> bool:
        c = peer.candidate
        # A fresh answer only: a mapping may have changed since (the reason of a fallback).
        return (self.verdict(now) in ("cone", "single") and c is not None
                and c["verdict"] in ("cone", "single") and now - c["when"] < PEER_ALIVE
                and now - c["received"] < 2.5 * ASK_EVERY)

    def start(self, peer: Peer, now: float, tell: bool = True) -> None:
        if tell:
            # Over the relayed path, before the endpoint moves: the peer starts too.
            self.send(peer.address, {"t": "punch"})
            time.sleep(0.05)
        peer.state, peer.target = "trying", peer.candidate["endpoint"]
        peer.started = peer.stable_since = now
        peer.attempts += 1
        self.wg.set_endpoint(peer.key, peer.target)
        log(f"{peer.name}: trying {peer.target} (lighthouse {peer.candidate['from']})")

    def to_relay(self, peer: Peer, now: float, event: str) -> None:
        self.wg.set_endpoint(peer.key, peer.relay_endpoint)
        if peer.state == "direct":
            peer.fallbacks += 1
            peer.backoff = BACKOFF[0]
        else:
            peer.backoff = min(peer.backoff * 2, BACKOFF[1])
        peer.state, peer.target, peer.since = "relay", None, now
        # A few probes over the relay at once: they refresh this side's NAT mapping toward
        # the relay (a NAT that lost the direct path's mapping lost that one too), instead
        # of waiting for the hop tunnel's next keepalive.
        peer.kick_until = now + 2.0
        self.probe(peer, now)
        peer.last_event = (event, now)
        peer.next_try = now + peer.backoff * random.uniform(0.8, 1.2)
        log(f"{peer.name}: {event}, back on the relay; next try in {peer.next_try - now:.0f} s")

    def tick(self, now: float) -> None:
        if self.part.get("lighthouses") and now >= self.next_ask:
            verdict = self.verdict(now)
            # Ask often only while a pair may soon punch; symmetric pairs never do.
            busy = verdict == "pending" or (verdict != "symmetric" and any(
                p.state == "trying" or now - p.punch_asked < ATTEMPT
                or (p.state == "relay" and now >= p.next_try - 2 * ASK_EVERY
                    and (p.candidate is None or p.candidate["verdict"] != "symmetric"))
                for p in self.peers.values()))
            for lh in self.part["lighthouses"]:
                keys = [p.key for p in self.peers.values()]
                for i in range(0, max(len(keys), 1), 16):
                    self.send(lh["address"], {"t": "ask", "verdict": verdict,
                                              "want": keys[i:i + 16]})
            self.next_ask = now + (ASK_EVERY if busy else ASK_IDLE)
        if not self.peers:
            return
        # wg(8) is asked every tick only while a punch is under way; once a second otherwise.
        look = (any(p.state == "trying" for p in self.peers.values())
                or now - self.live_at >= PROBE_DIRECT)
        live = None
        for peer in self.peers.values():
            if peer.state == "relay":
                if now < peer.kick_until and now - peer.last_probe >= 0.5:
                    self.probe(peer, now)
                asked = now - peer.punch_asked < 2.5 * ASK_EVERY
                if (asked or now >= peer.next_try) and self.can_punch(peer, now):
                    self.start(peer, now, tell=not asked)
                    peer.punch_asked = 0.0
                continue
            if live is None and look:
                live, self.live_at = self.wg.endpoints(), now
            have = live.get(peer.key) if live is not None else None
            if peer.state == "trying":
                if have != peer.target:
                    # A packet that came over the relay moved it back: not direct yet.
                    self.wg.set_endpoint(peer.key, peer.target)
                    peer.stable_since = now
                if now - peer.last_probe >= PROBE_TRYING:
                    self.probe(peer, now)
                if (now - peer.stable_since >= STABLE and peer.last_answer > peer.stable_since):
                    peer.state, peer.since = "direct", now
                    peer.upgrades += 1
                    peer.last_event = ("upgrade", now)
                    log(f"{peer.name}: direct at {peer.target} after "
                        f"{now - peer.started:.1f} s")
                elif now - peer.started > ATTEMPT:
                    self.to_relay(peer, now, "punch failed")
            elif peer.state == "direct":
                if have and have != peer.target:
                    if have == peer.relay_endpoint:
                        self.to_relay(peer, now, "peer went back to the relay")
                        continue
                    if endpoint(have):  # WireGuard roamed it: the peer moved
                        peer.target = have
                if now - peer.last_probe >= PROBE_DIRECT:
                    self.probe(peer, now)
                if now - max(peer.last_answer, peer.since) > DEAD:
                    self.to_relay(peer, now, "direct path lost")

    def probe(self, peer: Peer, now: float) -> None:
        peer.seq += 1
        peer.last_probe = now
        self.send(peer.address, {"t": "probe", "n": peer.seq})

    # -- status ------------------------------------------------------------------------
    def write_status(self) -> None:
        now = time.time()
        peers = {}
        for p in self.peers.values():
            path = {"direct": "direct (punched)", "trying": "trying direct",
                    "relay": f"relay via {p.relay}" if p.relay else "relay"}[p.state]
            peers[p.name] = {
                "path": path, "endpoint": p.target if p.state != "relay" else p.relay_endpoint,
                "since": iso(p.since), "attempts": p.attempts, "upgrades": p.upgrades,
                "fallbacks": p.fallbacks,
                "last_event": p.last_event[0] if p.last_event else None,
                "last_event_at": iso(p.last_event[1]) if p.last_event else None,
                "candidate": p.candidate["endpoint"] if p.candidate else None,
                "peer_nat": p.candidate["verdict"] if p.candidate else None}
        status = {"pid": os.getpid(),
                  "nat": self.verdict(now) if self.part.get("lighthouses") else None,
                  "seen": {a: you for a, (you, when) in self.seen.items()
                           if now - when < SEEN_FRESH},
                  "clients": len(self.part.get("clients", {})), "peers": peers}
        # Written when something changed, and every 30 s to show the agent is alive.
        text = json.dumps(status, sort_keys=True)
        if text == self.status_text and now - self.status_at < 30:
            return
        self.status_text, self.status_at = text, now
        status["updated"] = iso(now)
        with contextlib.suppress(OSError):
            write_atomic(self.status_path, json.dumps(status, indent=1, sort_keys=True), 0o644)


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def log(text: str) -> None:
    print(f"wgmesh agent: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wgmesh agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--state-dir", default=STATE_DIR,
                   help="where wgmesh_apply keeps bundle.json (default %(default)s)")
    args = p.parse_args(argv)
    try:
        Agent(args.state_dir).run()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
