"""The monitor's metrics and denied-flow log (module_utils wgmesh_metrics, wgmesh_monitor),
and its program as hosts get it (wgmesh.programs)."""

from __future__ import annotations

import calendar
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DENIED_LOG_PREFIX,
    DROP_COUNTERS,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_metrics import (
    METRICS,
    endpoints_moved,
    exposition,
    samples,
    table_differs,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_monitor import (
    denied_flow,
    flow_line,
    nflog_packets,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    canonical_table,
    named_counters,
    ruleset_generation,
    ruleset_stamp,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import peer_paths
from wgmesh.programs import monitor_program

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NOW = 1_800_000_000.0


def golden_bundle(name: str) -> dict:
    return json.loads((GOLDEN / name / "bundle.json").read_text())


def dump_of(bundle: dict, handshake: int = 1_799_999_990) -> str:
    """``wg show dump`` of an interface that runs the bundle's peers as configured."""
    lines = ["PRIVATE\tPUBLIC\t51820\toff"]
    for key in peer_paths(bundle["wg_conf"]):
        allowed = re.search(rf"PublicKey = {re.escape(key)}\nAllowedIPs = (.*)",
                            bundle["wg_conf"])[1].replace(" ", "")
        lines.append(f"{key}\t(none)\t192.0.2.9:51820\t{allowed}\t{handshake}\t1000\t2000\t25")
    return "\n".join(lines) + "\n"


def table_json(counters: dict[str, tuple[int, int]]) -> str:
    items = [{"metainfo": {"version": "1.0.6"}},
             {"table": {"family": "inet", "name": "wgmesh", "handle": 1}}]
    items += [{"counter": {"family": "inet", "name": n, "table": "wgmesh", "handle": 2 + i,
                           "packets": p, "bytes": b}}
              for i, (n, (p, b)) in enumerate(counters.items())]
    return json.dumps({"nftables": items})


COUNTERS = {"dropped_in": (3, 180), "dropped_out": (0, 0), "dropped_fwd": (0, 0),
            "dropped_underlay": (1, 60), "dropped_hop": (0, 0)}


def host_rows(name="alice-desktop", **changes):
    b = golden_bundle(name)
    table = table_json(COUNTERS)
    state = {"hash": b["hash"], "commit": "abc123", "applied": "2027-01-15T08:00:00Z",
             "table": canonical_table(table)}
    table = changes.pop("table", table)
    args = {"bundle": b, "state": state, "dump": dump_of(b), "agent": None,
            "counters": named_counters(table) if table else {},
            "table_drifts": table_differs(state, table), "key_mtime": 1_790_000_000.0,
            "endpoint_changes": {}, "denied": {"in": 2}, "now": NOW} | changes
    return samples(**args)


def value(rows, metric, **labels):
    found = [v for n, lab, v in rows if n == metric and all(lab.get(k) == x
                                                             for k, x in labels.items())]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_a_host_in_sync_reports_its_bundle_peers_paths_drops_and_key():
    rows = host_rows()
    b = golden_bundle("alice-desktop")
    assert value(rows, "wgmesh_info", node="alice-desktop", bundle=b["hash"],
                 commit="abc123") == 1
    assert value(rows, "wgmesh_drift") == 0
    assert value(rows, "wgmesh_interface_up") == 1
    assert value(rows, "wgmesh_peers") == 4
    assert value(rows, "wgmesh_peer_connection_info", peer="bob-laptop", connection="relay",
                 via="web1") == 1
    assert value(rows, "wgmesh_peer_connection_info", peer="alice-laptop",
                 connection="lan") == 1
    assert value(rows, "wgmesh_peer_last_handshake_timestamp_seconds",
                 peer="web1") == 1_799_999_990
    assert value(rows, "wgmesh_peer_transmit_bytes_total", peer="web1") == 2000
    assert value(rows, "wgmesh_dropped_packets_total", counter="in", reason="policy") == 3
    assert value(rows, "wgmesh_dropped_packets_total", counter="underlay",
                 reason="anti_spoof") == 1
    assert value(rows, "wgmesh_dropped_bytes_total", counter="underlay") == 60
    assert value(rows, "wgmesh_bundle_applied_timestamp_seconds") == calendar.timegm(
        (2027, 1, 15, 8, 0, 0))
    # The golden mesh limits keys to 180 days.
    assert value(rows, "wgmesh_key_expiry_timestamp_seconds") == 1_790_000_000 + 180 * 86400
    assert value(rows, "wgmesh_denied_flows_logged_total", direction="in") == 2
    # Labels are node names and counter names only: a bounded number of series.
    labels = {k for _, lab, _ in rows for k in lab}
    assert labels == {"node", "interface", "bundle", "commit", "peer", "connection", "via",
                      "counter", "reason", "direction"}


@pytest.mark.parametrize(("change", "why"), [
    ({"dump": None}, "interface down"),
    ({"table": None}, "table not loaded"),
    ("peer", "a peer's allowed IPs differ"),
    ("element", "a set element was added"),
])
def test_drift_is_reported(change, why):
    b = golden_bundle("alice-desktop")
    if change == "peer":
        change = {"dump": dump_of(b).replace("100.64.0.2/32", "100.64.0.2/32,10.9.0.0/16")}
    elif change == "element":
        t = json.loads(table_json(COUNTERS))
        t["nftables"].append({"set": {"family": "inet", "name": "in4", "table": "wgmesh",
                                      "elem": ["100.64.0.99"]}})
        change = {"table": json.dumps(t)}
    assert value(host_rows(**change), "wgmesh_drift") == 1, why


def test_a_punched_pair_and_a_moved_endpoint_are_reported():
    b = golden_bundle("alice-desktop")
    rows = host_rows(agent={"peers": {"bob-laptop": {"path": "direct (punched)"}}})
    assert value(rows, "wgmesh_peer_connection_info", peer="bob-laptop") == 1
    assert value(rows, "wgmesh_peer_connection_info", peer="bob-laptop",
                 connection="punched", via="") == 1
    names = {k: p["name"] for k, p in peer_paths(b["wg_conf"]).items()}
    changes: dict[str, int] = {}
    seen = endpoints_moved({}, dump_of(b), names, changes)
    assert changes == {} and seen["web1"] == "192.0.2.9:51820"
    moved = dump_of(b).replace("192.0.2.9:51820", "203.0.113.7:4500", 1)
    endpoints_moved(seen, moved, names, changes)
    assert list(changes.values()) == [1]


def test_the_textfile_passes_promtool_and_every_metric_has_help():
    text = exposition(host_rows())
    assert {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")} <= \
        set(METRICS)
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is part of ./dev.sh install"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def ipv4(proto: int, src: str, dst: str, rest: bytes) -> bytes:
    header = bytes([0x45, 0]) + struct.pack("!H", 20 + len(rest)) + bytes(5) + bytes([proto]) \
        + bytes(2) + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return header + rest


def ipv6(proto: int, src: str, dst: str, rest: bytes) -> bytes:
    return bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", len(rest), proto, 64) \
        + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + rest


NAMES = {"100.64.0.1": "alice-laptop", "100.64.0.5": "db1", "fd7a:115c:a1e0::5": "db1"}


def test_a_denied_packet_is_named_by_its_nodes_protocol_and_port():
    tcp = ipv4(6, "100.64.0.1", "100.64.0.5", struct.pack("!HH", 40000, 5432))
    flow = denied_flow(DENIED_LOG_PREFIX + "in", tcp, NAMES)
    assert flow == {"direction": "in", "src": "100.64.0.1", "src_node": "alice-laptop",
                    "dst": "100.64.0.5", "dst_node": "db1", "proto": "tcp", "port": 5432}
    assert flow_line(flow) == ("denied in: alice-laptop (100.64.0.1) -> db1 (100.64.0.5) "
                               "tcp/5432")
    udp6 = ipv6(17, "fd7a:115c:a1e0::9", "fd7a:115c:a1e0::5", struct.pack("!HH", 5353, 53))
    line = flow_line(denied_flow(DENIED_LOG_PREFIX + "out", udp6, NAMES))
    assert line == "denied out: fd7a:115c:a1e0::9 -> db1 (fd7a:115c:a1e0::5) udp/53"
    ping = ipv4(1, "100.64.0.1", "100.64.0.5", bytes([8, 0]))
    assert flow_line(denied_flow(DENIED_LOG_PREFIX + "fwd", ping, NAMES)).endswith(
        "icmp type 8")
    # The table copies 24 bytes of an IPv4 packet: options push the ports out of reach.
    with_options = bytes([0x46]) + tcp[1:20] + bytes(4)
    assert denied_flow(DENIED_LOG_PREFIX + "in", with_options, NAMES)["port"] is None
    assert denied_flow("other prefix", tcp, NAMES) is None
    assert denied_flow(DENIED_LOG_PREFIX + "in", tcp[:12], NAMES) is None


def test_nflog_messages_are_split_into_prefix_and_packet():
    def attr(kind, value):
        a = struct.pack("=HH", 4 + len(value), kind) + value
        return a + bytes(-len(a) % 4)
    packet = ipv4(17, "100.64.0.1", "100.64.0.5", struct.pack("!HH", 1, 2))
    body = struct.pack("=BBH", 2, 0, 0) + attr(1, bytes(4)) + attr(10, b"wgmesh denied in\0") \
        + attr(9, packet)
    message = struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body
    assert list(nflog_packets(message * 2)) == [("wgmesh denied in", packet)] * 2
    assert list(nflog_packets(message[:10])) == []


def test_the_monitor_program_runs_from_its_zip_alone(tmp_path):
    """Hosts get one zip of module_utils; it runs with the standard library only and the
    same code gives the same bytes (so a second run installs nothing)."""
    program = tmp_path / "monitor.pyz"
    program.write_bytes(monitor_program())
    assert monitor_program() == program.read_bytes()
    names = zipfile.ZipFile(program).namelist()
    assert all(n == "__main__.py" or n.startswith("ansible_collections/") for n in names)
    b = golden_bundle("db1")
    state = {"hash": b["hash"], "commit": None, "applied": "2027-01-15T08:00:00Z",
             "table": None}
    (tmp_path / "bundle.json").write_text(json.dumps(b))
    (tmp_path / "state.json").write_text(json.dumps(state))
    textfile = tmp_path / "prom" / "wgmesh.prom"
    (tmp_path / "monitor.json").write_text(json.dumps({"textfile": str(textfile)}))
    run = subprocess.run([sys.executable, "-I", "-S", str(program), "--state-dir",
                          str(tmp_path), "--once"], capture_output=True, text=True,
                         env={"PATH": "/nonexistent"})
    assert run.returncode == 0, run.stderr
    text = textfile.read_text()
    # No interface and no table here: both are reported, as drift.
    assert "wgmesh_interface_up 0\n" in text and "wgmesh_drift 1\n" in text
    assert 'wgmesh_info{node="db1",interface="wg0",bundle="' + b["hash"] in text


def test_the_ruleset_generation_moves_with_every_change(tmp_path):
    """The monitor lists the whole table only when this number moved (a namespace of its
    own, so nothing else changes it meanwhile)."""
    script = (
        "import sys; sys.path[:0] = sys.argv[1:]\n"
        "from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import "
        "ruleset_generation as g\n"
        "import subprocess\n"
        "a = g(); b = g()\n"
        "subprocess.run(['nft', 'add', 'table', 'inet', 'scratch'], check=True)\n"
        "c = g()\n"
        "subprocess.run(['nft', 'add', 'set', 'inet', 'scratch', 's', '{ type ipv4_addr; }'],"
        " check=True)\n"
        "d = g()\n"
        "print(a, b, c, d)\n")
    ns = f"wgmesh-gen-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script,
                              *sys.path], capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    a, b, c, d = (int(x) for x in out.split())
    assert a == b and c > b and d > c
    assert isinstance(ruleset_generation(), int)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert ruleset_stamp() == f"{boot}/{ruleset_generation()}"


def test_every_drop_counter_a_table_declares_has_a_reason():
    """The names the renderer gives its counters are the ones the monitor knows (a relay's
    table, web1's, has them all)."""
    declared = set()
    for table in GOLDEN.glob("*/nftables.nft"):
        declared |= set(re.findall(r"^    counter (\w+) \{ \}$", table.read_text(), re.M))
    assert declared == set(DROP_COUNTERS)
    relay = golden_bundle("web1")
    counters = dict.fromkeys(DROP_COUNTERS, (2, 100))
    table = table_json(counters)
    state = {"hash": relay["hash"], "table": canonical_table(table)}
    rows = samples(relay, state, dump_of(relay), named_counters(table), False, None, None, {},
                   {}, NOW)
    assert {(lab["counter"], lab["reason"]) for n, lab, _ in rows
            if n == "wgmesh_dropped_packets_total"} == {
        ("in", "policy"), ("out", "policy"), ("fwd", "policy"), ("underlay", "anti_spoof"),
        ("relay", "relay"), ("hop", "underlay")}
