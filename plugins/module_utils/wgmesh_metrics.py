"""A host's mesh as Prometheus metrics: the node_exporter textfile the monitor writes.

Pure: it reads what the host already keeps (its bundle and apply record in the state
folder, the NAT agent's status) and what ``wg show dump`` and ``nft -j list table`` print,
and gives the exposition text. Labels name nodes and drop counters, never packet fields,
so the number of series is bounded by the mesh. Standard library only.
"""

from __future__ import annotations

import calendar
import datetime
import re

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import DROP_COUNTERS
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    canonical_table,
    table_drift,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import (
    desired_peers,
    parse_conf,
    parse_dump,
    peer_paths,
)

# name: (type, help); written in this order, each with its HELP and TYPE lines.
METRICS = {
    "wgmesh_info": ("gauge", "The bundle the host runs (always 1)."),
    "wgmesh_bundle_applied_timestamp_seconds": ("gauge", "When the host applied its bundle."),
    "wgmesh_interface_up": ("gauge", "1 when the mesh interface runs."),
    "wgmesh_drift": ("gauge", "1 when the live state differs from the bundle "
                              "(peers, listen port, filter table)."),
    "wgmesh_peers": ("gauge", "Peers the bundle gives the host."),
    "wgmesh_peer_connection_info": ("gauge", "A peer's path: lan, direct, relay (via names "
                                             "the relay) or punched (always 1)."),
    "wgmesh_peer_last_handshake_timestamp_seconds": (
        "gauge", "A peer's latest WireGuard handshake (0: none yet); its age is time() minus "
                 "this."),
    "wgmesh_peer_receive_bytes_total": ("counter", "Bytes received from a peer."),
    "wgmesh_peer_transmit_bytes_total": ("counter", "Bytes sent to a peer."),
    "wgmesh_peer_persistent_keepalive_seconds": ("gauge", "A peer's keepalive (0: off)."),
    "wgmesh_peer_endpoint_changes_total": ("counter", "Times the monitor saw a peer's "
                                                      "endpoint change."),
    "wgmesh_dropped_packets_total": ("counter", "Packets the filter dropped, by counter and "
                                                "reason (policy, anti_spoof, relay, "
                                                "underlay)."),
    "wgmesh_dropped_bytes_total": ("counter", "Bytes the filter dropped, by counter and "
                                              "reason."),
    "wgmesh_key_created_timestamp_seconds": ("gauge", "When the host's private key was "
                                                      "written."),
    "wgmesh_key_expiry_timestamp_seconds": ("gauge", "When the key passes the network's "
                                                     "key_max_age_days (absent: no limit)."),
    "wgmesh_node_expiry_timestamp_seconds": ("gauge", "The node's expires date, when it "
                                                      "leaves the mesh (absent: never)."),
    "wgmesh_denied_flows_logged_total": ("counter", "Denied flows the monitor logged, by "
                                                    "direction."),
    "wgmesh_textfile_refresh_timestamp_seconds": ("gauge", "When this file was written."),
}


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _path(connection: str, relay: str | None, punched: dict | None) -> tuple[str, str]:
    """(connection, via) of a peer: the compiled one, or punched when the agent moved the
    relayed pair to a direct path."""
    if connection == "relay" and punched and punched.get("path") == "direct (punched)":
        return "punched", ""
    return connection, relay or ""


def valid_monitor_part(part: object) -> bool:
    """A bundle's ``monitor`` part: key_max_age_days (0 to 3650) and expires (None or a
    YYYY-MM-DD date), nothing else."""
    if not isinstance(part, dict) or set(part) != {"key_max_age_days", "expires"}:
        return False
    days, expires = part["key_max_age_days"], part["expires"]
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 3650:
        return False
    if expires is None:
        return True
    if not isinstance(expires, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", expires):
        return False
    try:
        datetime.date.fromisoformat(expires)
    except ValueError:
        return False
    return True


def _day(date: str | None) -> int | None:
    if not date:
        return None
    return calendar.timegm(datetime.date.fromisoformat(date).timetuple())


def table_differs(state: dict, table: str | None) -> bool:
    """Whether the loaded table (``nft -j list table``; None: not loaded) differs from the
    one recorded when the bundle was applied."""
    if table is None:
        return True
    return bool(table_drift(state["table"], canonical_table(table))) if state.get("table") \
        else False


def samples(bundle: dict, state: dict, dump: str | None, counters: dict[str, tuple[int, int]],
            table_drifts: bool,
            agent: dict | None, key_mtime: float | None, endpoint_changes: dict[str, int],
            denied: dict[str, int], now: float) -> list[tuple[str, dict, float]]:
    """(metric, labels, value) of one host; ``dump`` None when the interface is missing;
    ``counters`` the table's (named_counters), ``table_drifts`` table_differs'."""
    node = bundle["name"]
    out: list[tuple[str, dict, float]] = [
        ("wgmesh_info", {"node": node, "interface": bundle["interface"],
                         "bundle": state.get("hash", ""), "commit": state.get("commit") or ""},
         1)]
    applied = state.get("applied")
    if applied:
        out.append(("wgmesh_bundle_applied_timestamp_seconds", {}, calendar.timegm(
            datetime.datetime.strptime(applied, "%Y-%m-%dT%H:%M:%SZ").timetuple())))
    out.append(("wgmesh_interface_up", {}, int(dump is not None)))
    conf = parse_conf(bundle["wg_conf"])
    want = desired_peers(conf)
    port, have = parse_dump(dump) if dump is not None else (0, {})
    drift = dump is None or set(want) != set(have) or any(
        want[k]["allowed"] != have[k]["allowed"] for k in want if k in have)
    listen = conf["interface"].get("listenport")
    drift = drift or (listen is not None and int(listen[0]) != port)
    drift = drift or table_drifts
    out.append(("wgmesh_drift", {}, int(drift)))
    out.append(("wgmesh_peers", {}, len(want)))
    punched = (agent or {}).get("peers") or {}
    for key, p in sorted(peer_paths(bundle["wg_conf"]).items(), key=lambda kv: kv[1]["name"]):
        name, r = p["name"], have.get(key)
        connection, via = _path(p["connection"], p["relay"], punched.get(name))
        out.append(("wgmesh_peer_connection_info",
                    {"peer": name, "connection": connection, "via": via}, 1))
        out.append(("wgmesh_peer_endpoint_changes_total", {"peer": name},
                    endpoint_changes.get(name, 0)))
        if r is None:
            continue
        out += [("wgmesh_peer_last_handshake_timestamp_seconds", {"peer": name}, r["handshake"]),
                ("wgmesh_peer_receive_bytes_total", {"peer": name}, r["rx"]),
                ("wgmesh_peer_transmit_bytes_total", {"peer": name}, r["tx"]),
                ("wgmesh_peer_persistent_keepalive_seconds", {"peer": name}, r["keepalive"])]
    for counter, reason in DROP_COUNTERS.items():
        if counter in counters:
            labels = {"counter": counter[len("dropped_"):], "reason": reason}
            out.append(("wgmesh_dropped_packets_total", labels, counters[counter][0]))
            out.append(("wgmesh_dropped_bytes_total", labels, counters[counter][1]))
    monitor = bundle.get("monitor") or {}
    if key_mtime is not None:
        out.append(("wgmesh_key_created_timestamp_seconds", {}, int(key_mtime)))
        if monitor.get("key_max_age_days"):
            out.append(("wgmesh_key_expiry_timestamp_seconds", {},
                        int(key_mtime) + 86400 * monitor["key_max_age_days"]))
    expires = _day(monitor.get("expires"))
    if expires is not None:
        out.append(("wgmesh_node_expiry_timestamp_seconds", {}, expires))
    for direction in ("in", "out", "fwd"):
        out.append(("wgmesh_denied_flows_logged_total", {"direction": direction},
                    denied.get(direction, 0)))
    out.append(("wgmesh_textfile_refresh_timestamp_seconds", {}, round(now, 3)))
    return out


def endpoints_moved(before: dict[str, str], dump: str | None, names: dict[str, str],
                    changes: dict[str, int]) -> dict[str, str]:
    """Count each peer whose endpoint differs from the last refresh's (into ``changes``,
    by name); the endpoints now, by name."""
    if dump is None:
        return before
    now = {names[k]: r["endpoint"] for k, r in parse_dump(dump)[1].items()
           if k in names and r["endpoint"]}
    for name, endpoint in now.items():
        if name in before and before[name] != endpoint:
            changes[name] = changes.get(name, 0) + 1
    return now


def exposition(rows: list[tuple[str, dict, float]]) -> str:
    """The text format node_exporter's textfile collector reads: each metric's HELP and
    TYPE, then its samples."""
    by_name: dict[str, list[str]] = {}
    for name, labels, value in rows:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        by_name.setdefault(name, []).append(
            f"{name}{{{text}}} {value}" if text else f"{name} {value}")
    lines = []
    for name, (kind, text) in METRICS.items():
        if name in by_name:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *by_name[name]]
    return "\n".join(lines) + "\n"
