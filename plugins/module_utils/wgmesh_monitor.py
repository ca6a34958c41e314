"""The wgmesh monitor: what a host's mesh does, for the site's own monitoring.

wgmesh_apply installs it on every host (``monitor.pyz`` in the state folder, a zip of these
module_utils and nothing else) and, where systemd runs, as ``wgmesh-monitor.service``.
It does two things, as root with CAP_NET_ADMIN only:

- Every ``interval`` seconds it writes the node_exporter textfile ``textfile`` (from
  ``monitor.json`` in the state folder; empty: none) whole, by rename (wgmesh_metrics).
- It reads the policy's denied packets from the table's nflog group (network.log_denied
  in mesh.yml: headers only, rate-limited by the table) and logs one line for each, with
  the source and destination nodes, protocol and port: to standard output (the journal under
  systemd), and the last ones to ``denied.json`` in the state folder, which
  ``wgmesh why --live`` reads. Never a payload byte: only the addresses, protocol and ports
  are read from the copied headers.

``--once`` writes the textfile once and exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DENIED_LOG_GROUP,
    DENIED_LOG_PREFIX,
    MONITOR_CONFIG,
    PROTO_NAMES,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    read_text,
    write_atomic,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_metrics import (
    endpoints_moved,
    exposition,
    samples,
    table_differs,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    LIST_COUNTERS,
    LIST_TABLE,
    named_counters,
    netlink_attributes,
    ruleset_stamp,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import peer_names

DENIED_KEPT = 100  # the last denied flows kept in denied.json
MONITOR_STATE = "monitor-state.json"
# nfnetlink_log (linux/netfilter/nfnetlink_log.h)
NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
# The most of a packet read: IPv6's header and the ports after it (the table's log rules
# copy no more: IPv4 24 bytes, IPv6 44).
COPY_RANGE = 44


def _outputs(*commands: tuple[str, ...]) -> list[str | None]:
    """The commands' outputs, run side by side; None for one that fails or is missing."""
    procs = []
    for argv in commands:
        try:
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True))
        except FileNotFoundError:
            procs.append(None)
    out = []
    for p in procs:
        text = p.communicate()[0] if p is not None else None
        out.append(text if p is not None and p.returncode == 0 else None)
    return out


class Monitor:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        config = json.loads(read_text(os.path.join(state_dir, MONITOR_CONFIG)) or "{}")
        self.textfile = config.get("textfile") or ""
        self.interval = float(config.get("interval", 15))
        self.key_file = config.get("key_file")
        # The counters, kept across restarts and shared with --once (monitor-state.json).
        self.kept = read_text(os.path.join(state_dir, MONITOR_STATE))
        kept = json.loads(self.kept) if self.kept else {}
        self.endpoints: dict[str, str] = kept.get("endpoints", {})
        self.endpoint_changes: dict[str, int] = kept.get("endpoint_changes", {})
        self.denied_counts: dict[str, int] = kept.get("denied", {})
        # [ruleset stamp, the apply it was compared with, whether the table differed] of
        # the last comparison of the whole table
        self.checked: list = kept.get("checked", [None, None, True])
        self.names: dict[str, str] = {}  # mesh address -> node name (the hosts block)
        self.denied: list[dict] = json.loads(
            read_text(os.path.join(state_dir, "denied.json")) or "[]")[-DENIED_KEPT:]

    def _json(self, name: str):
        text = read_text(os.path.join(self.state_dir, name))
        return json.loads(text) if text else None

    def refresh(self) -> bool:
        """Write the textfile from the host's state now; False when the host runs no
        bundle (nothing is written then)."""
        bundle, state = self._json("bundle.json"), self._json("state.json")
        if bundle is None or state is None:
            return False
        self.names = {f[0]: f[1] for f in (line.split() for line in
                                           (bundle.get("hosts_block") or "").splitlines())
                      if len(f) >= 2}
        if not self.textfile:
            return False
        # The whole table is listed (and compared) only when the ruleset changed since the
        # apply recorded it, and then once per change; its counters are read every time.
        stamp, applied = ruleset_stamp(), [state.get("hash"), state.get("applied")]
        if stamp is not None and stamp == state.get("ruleset"):
            self.checked = [stamp, applied, False]  # the very table the apply recorded
        if stamp is None or [stamp, applied] != self.checked[:2]:
            dump, table = _outputs(("wg", "show", bundle["interface"], "dump"), LIST_TABLE)
            counters = named_counters(table) if table is not None else {}
            self.checked = [stamp, applied, table_differs(state, table)]
        else:
            dump, listed = _outputs(("wg", "show", bundle["interface"], "dump"), LIST_COUNTERS)
            counters = named_counters(listed) if listed is not None else {}
        self.endpoints = endpoints_moved(self.endpoints, dump, peer_names(bundle["wg_conf"]),
                                         self.endpoint_changes)
        try:
            key_mtime = os.stat(self.key_file).st_mtime if self.key_file else None
        except FileNotFoundError:
            key_mtime = None
        self.keep()
        rows = samples(bundle, state, dump, counters, self.checked[2], self._json("agent.json"),
                       key_mtime, self.endpoint_changes, self.denied_counts, time.time())
        write_atomic(self.textfile, exposition(rows), 0o644, dir_mode=0o755)
        return True

    def keep(self) -> None:
        """Write monitor-state.json when it changed (not every refresh: a disk's writes)."""
        text = json.dumps({"endpoints": self.endpoints,
                           "endpoint_changes": self.endpoint_changes,
                           "denied": self.denied_counts, "checked": self.checked})
        if text != self.kept:
            write_atomic(os.path.join(self.state_dir, MONITOR_STATE), text, 0o600)
            self.kept = text

    def log_denied(self, prefix: str, packet: bytes) -> None:
        """One denied packet: named with the nodes of the last refresh's bundle (no file is
        read per packet)."""
        flow = denied_flow(prefix, packet, self.names)
        if flow is None:
            return
        flow["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.denied_counts[flow["direction"]] = self.denied_counts.get(flow["direction"], 0) + 1
        print(flow_line(flow), flush=True)
        self.denied = [*self.denied, flow][-DENIED_KEPT:]
        write_atomic(os.path.join(self.state_dir, "denied.json"), json.dumps(self.denied), 0o600)
        self.keep()


def denied_flow(prefix: str, packet: bytes, names: dict[str, str]) -> dict | None:
    """A denied packet's flow from its copied headers: direction (the chain), source and
    destination (address and node name, when a node has it), protocol and destination port
    (ICMP: type); None for a packet that is not ours or too short to name."""
    if not prefix.startswith(DENIED_LOG_PREFIX) or len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        offset, proto = (packet[0] & 0x0F) * 4, packet[9]
        src, dst = ipaddress.ip_address(packet[12:16]), ipaddress.ip_address(packet[16:20])
    elif version == 6 and len(packet) >= 40:
        offset, proto = 40, packet[6]
        src, dst = ipaddress.ip_address(packet[8:24]), ipaddress.ip_address(packet[24:40])
    else:
        return None
    port = None
    if proto in (6, 17, 132) and len(packet) >= offset + 4:
        port = struct.unpack_from("!H", packet, offset + 2)[0]
    elif proto in (1, 58) and len(packet) > offset:
        port = packet[offset]  # the ICMP type
    return {"direction": prefix[len(DENIED_LOG_PREFIX):].strip(),
            "src": str(src), "src_node": names.get(str(src)),
            "dst": str(dst), "dst_node": names.get(str(dst)),
            "proto": PROTO_NAMES.get(proto, str(proto)), "port": port}


def flow_line(flow: dict) -> str:
    def side(addr, node):
        return f"{node} ({addr})" if node else addr
    what = flow["proto"] + (f"/{flow['port']}" if flow["port"] is not None else "")
    if flow["proto"] in ("icmp", "ipv6-icmp") and flow["port"] is not None:
        what = f"{flow['proto']} type {flow['port']}"
    return (f"denied {flow['direction']}: {side(flow['src'], flow['src_node'])} -> "
            f"{side(flow['dst'], flow['dst_node'])} {what}")


def _nlmsg(msg_type: int, res_id: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", res_id)
    for kind, value in attrs:
        attr = struct.pack("=HH", 4 + len(value), kind) + value
        body += attr + b"\0" * (-len(attr) % 4)
    return struct.pack("=IHHII", 16 + len(body), msg_type, 1 | 4, 0, 0) + body  # REQUEST|ACK


def nflog_socket(group: int = DENIED_LOG_GROUP) -> socket.socket:
    """A netlink socket bound to an nflog group, copying COPY_RANGE bytes of each packet."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    config = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    for attrs in ([(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))],
                  [(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0))]):
        sock.send(_nlmsg(config, group, attrs))
        answer = sock.recv(4096)
        error = struct.unpack_from("=i", answer, 16)[0] if len(answer) >= 20 else 0
        if error:
            sock.close()
            raise OSError(-error, os.strerror(-error))
    return sock


def nflog_packets(data: bytes):
    """(prefix, packet) of each logged packet in one netlink read."""
    offset = 0
    while offset + 20 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 20:
            return
        if msg_type == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = netlink_attributes(data, offset + 20, min(len(data), offset + length))
            prefix = attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode("ascii", "replace")
            yield prefix, attrs.get(NFULA_PAYLOAD, b"")
        offset += (length + 3) & ~3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wgmesh-monitor", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default="/var/lib/wgmesh")
    parser.add_argument("--once", action="store_true", help="write the textfile once, exit")
    args = parser.parse_args(argv)
    monitor = Monitor(args.state_dir)
    if args.once:
        return 0 if monitor.refresh() else 1
    try:
        sock = nflog_socket()
    except OSError as exc:
        print(f"wgmesh-monitor: denied flows are not logged: nflog group {DENIED_LOG_GROUP}: "
              f"{exc}", file=sys.stderr, flush=True)
        sock = None
    due = 0.0
    while True:
        now = time.monotonic()
        if now >= due:
            try:
                monitor.refresh()
            except (OSError, ValueError, KeyError) as exc:
                print(f"wgmesh-monitor: textfile not written: {exc}", file=sys.stderr,
                      flush=True)
            due = now + monitor.interval
        if sock is None:
            time.sleep(max(0.0, due - time.monotonic()))
            continue
        ready, _, _ = select.select([sock], [], [], max(0.0, due - time.monotonic()))
        if ready:
            try:
                data = sock.recv(65536)
            except OSError:  # ENOBUFS: more were logged than read; the next ones count
                continue
            for prefix, packet in nflog_packets(data):
                monitor.log_denied(prefix, packet)
