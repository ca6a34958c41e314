"""A WireGuard interface made equal to its configuration, live: addresses, routes, peers (only
the ones that differ), and bringing it up or down. Standard library only."""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    write_atomic,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import public_of
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_routing import (
    exit_routing,
    management_rules,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import Runner
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import (
    desired_peers,
    parse_conf,
    parse_dump,
    peer_names,
)


def outside(allowed: set[str], nets: list) -> list[str]:
    """Allowed IPs that may need a route: host addresses inside the interface's own
    prefixes (every mesh peer) are skipped without building a network object each."""
    out = []
    for a in allowed:
        host, _, length = a.partition("/")
        if length in ("32", "128"):
            addr = ipaddress.ip_address(host)
            if any(addr.version == n.version and addr in n for n in nets):
                continue
        out.append(a)
    return out


def same_networks(a: set[str], b: set[str]) -> bool:
    """Equal prefixes, however written (the renderer and wg both print them canonically, so
    the strings are compared first)."""
    if a == b:
        return True
    def norm(nets):
        return {str(ipaddress.ip_network(n, strict=False)) for n in nets}
    return norm(a) == norm(b)


def endpoint_differs(want: str | None, have: str | None) -> bool:
    """A configured literal endpoint that the interface does not use. Learned endpoints
    (peers behind NAT, roaming) are left alone."""
    if want is None:
        return False
    host = want.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False  # a DNS name: wg resolved it; nothing to compare
    return want != have


def reconcile(kind: str, want: set[str], have: set[str], iface: str, run: Runner,
              check_mode: bool) -> list[str]:
    """Add what is wanted and missing, remove what is there and not wanted (ip address or
    ip route on the interface)."""
    actions = []
    for value, verb, word in [*((v, "replace" if kind == "route" else "add", "add")
                                for v in sorted(want - have)),
                              *((v, "del", "remove") for v in sorted(have - want))]:
        actions.append(f"{word} {kind} {value}")
        if not check_mode:
            run("ip", kind, verb, value, "dev", iface)
    return actions


def public_key_of(key_file: str) -> str:
    with open(key_file) as fh:
        return public_of(fh.read().strip())


def sync_interface(run: Runner, iface: str, conf_text: str, key_file: str, service: str,
                   keep: list[str], check_mode: bool,
                   roaming: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Make the running interface equal to its configuration, live; its file is written
    already (wg-quick reads it). Returns what differed, in words."""
    conf = parse_conf(conf_text)
    want = desired_peers(conf)
    actions: list[str] = []
    if run.rc("ip", "link", "show", "dev", iface) != 0:
        actions.append(f"bring {iface} up ({service})")
        if check_mode:
            return actions
        if service == "systemd":
            # Its file's hooks load the table first and start the keepalive handshakes.
            run("systemctl", "enable", "--now", f"wg-quick@{iface}")
            return actions
        up_without_peers(run, iface, conf_text)  # the peers follow with wg set
    elif service == "systemd" and run.rc("systemctl", "is-enabled", "--quiet",
                                       f"wg-quick@{iface}") != 0:
        actions.append(f"enable wg-quick@{iface}")
        if not check_mode:
            run("systemctl", "enable", f"wg-quick@{iface}")

    # A key file replaced (rotation, a rebuilt host) while the interface kept the old key.
    running_key = run("wg", "show", iface, "public-key").strip()
    file_key = public_key_of(key_file)
    if running_key != file_key:
        actions.append(f"{iface} runs with key {running_key or '(none)'}, the key file holds "
                       f"{file_key}: load the key file")
        if not check_mode:
            run("wg", "set", iface, "private-key", key_file)
            start_handshakes(run, iface, want)

    port, have = parse_dump(run.output("wg", "show", iface, "dump")[1])
    want_port = int(conf["interface"].get("listenport", ["0"])[0])
    added = sorted(set(want) - set(have))
    removed = sorted(set(have) - set(want))
    updated = sorted(k for k in set(want) & set(have)
                     if not same_networks(want[k]["allowed"], have[k]["allowed"])
                     or want[k]["keepalive"] != have[k]["keepalive"]
                     or (k not in roaming
                         and endpoint_differs(want[k]["endpoint"], have[k]["endpoint"])))
    if added or removed or updated or (want_port and want_port != port):
        names = peer_names(conf_text)
        words = [f"+{names.get(k, k)}" for k in added] + [f"-{k}" for k in removed] + [
            f"~{names.get(k, k)}" for k in updated]
        if len(words) > 12:
            words = [*words[:10], f"and {len(words) - 10} more"]
        if want_port and want_port != port:
            words.append(f"listen port {port} -> {want_port}")
        actions.append(f"{iface} peers: {', '.join(words)}")
        if not check_mode:
            set_peers(run, iface, want, have, added, removed, updated,
                      want_port if want_port and want_port != port else None, roaming)

    # Addresses, MTU and routes for allowed IPs outside the interface's own prefixes.
    want_addrs = {str(ipaddress.ip_interface(a.strip())) for v in
                  conf["interface"].get("address", []) for a in v.split(",") if a.strip()}
    have_addrs = set(re.findall(r"inet6? (\S+) .*scope global",
                                run("ip", "-o", "address", "show", "dev", iface)))
    actions += reconcile("address", want_addrs, have_addrs, iface, run, check_mode)
    mtu = conf["interface"].get("mtu", [None])[0]
    link = run("ip", "-o", "link", "show", "dev", iface)
    if mtu and f" mtu {mtu} " not in link:
        actions.append(f"set {iface} mtu {mtu}")
        if not check_mode:
            run("ip", "link", "set", "dev", iface, "mtu", mtu)
    nets = [ipaddress.ip_interface(a).network for a in want_addrs]
    routed = {str(n) for p in want.values() for n in map(ipaddress.ip_network,
                                                          outside(p["allowed"], nets))
              if n.prefixlen and not any(n.version == o.version and n.subnet_of(o)
                                         for o in nets)}
    have_routes = set()
    for family in ("-4", "-6"):
        for line in run("ip", family, "route", "show", "dev", iface, "proto", "boot").splitlines():
            have_routes.add(str(ipaddress.ip_network(line.split()[0], strict=False)))
    actions += reconcile("route", routed, have_routes, iface, run, check_mode)

    # Management rules first: they must be in place before the default route moves.
    exits = any(d in p["allowed"] for p in want.values() for d in ("0.0.0.0/0", "::/0"))
    actions += management_rules(run, keep, exits, check_mode)
    actions += exit_routing(run, iface, want, check_mode)
    return actions


# Peers per `wg set` call: each is a handful of arguments, and the kernel limits a command
# line to a few MiB.
PEERS_PER_SET = 200


def set_peers(run: Runner, iface: str, want: dict[str, dict], have: dict[str, dict],
              added: list[str], removed: list[str], updated: list[str],
              port: int | None, roaming: frozenset[str] | set[str] = frozenset()) -> None:
    """Change only the peers that differ, and only what differs of them, with `wg set`.
    A peer the change leaves alone is not written at all: wireguard-go replaces a peer's
    allowed IPs by removing them first, so rewriting an unchanged peer (as `wg syncconf`
    does with every peer) can drop a packet of a flow the change does not touch."""
    groups: list[list[str]] = [["peer", k, "remove"] for k in removed]
    for k in [*added, *updated]:
        w, h = want[k], have.get(k)
        one = ["peer", k]
        if w["endpoint"] and (h is None or (k not in roaming and endpoint_differs(
                w["endpoint"], h["endpoint"]))):
            one += ["endpoint", w["endpoint"]]
        if h is None or w["keepalive"] != h["keepalive"]:
            one += ["persistent-keepalive", str(w["keepalive"]) if w["keepalive"] else "off"]
        if h is None or not same_networks(w["allowed"], h["allowed"]):
            one += ["allowed-ips", ",".join(sorted(w["allowed"]))]
        groups.append(one)
    head = ["listen-port", str(port)] if port else []
    for i in range(0, max(len(groups), 1), PEERS_PER_SET):
        batch = [a for g in groups[i:i + PEERS_PER_SET] for a in g]
        if batch or head:
            run("wg", "set", iface, *head, *batch)
        head = []


def interface_section(conf_text: str) -> str:
    """A wg-quick file's [Interface] section alone, with its hooks: the filter first."""
    return conf_text.split("\n[Peer]", 1)[0] + "\n"


def up_without_peers(run: Runner, iface: str, conf_text: str) -> None:
    """wg-quick up from the [Interface] section alone. With peers, wg-quick adds each
    allowed IP's route with its own `ip` calls (seconds for a thousand peers); the caller
    then adds the peers with `wg set`, and the routes the mesh prefix does not cover."""
    head = interface_section(conf_text)
    os.makedirs("/run/wgmesh", mode=0o700, exist_ok=True)
    path = f"/run/wgmesh/{iface}.conf"  # wg-quick takes the interface name from the file's
    write_atomic(path, head, 0o600, dir_mode=0o755)
    try:
        run("wg-quick", "up", path)
    finally:
        os.unlink(path)


def start_handshakes(run: Runner, iface: str, want: dict[str, dict]) -> None:
    """Peers with a keepalive (this host is behind NAT, or on a hop tunnel) get a keepalive
    now, so the tunnel is open when the run ends: after the running key changed. Setting the
    interval from 0 again sends one (the rendered files' PostUp hook does the same at up)."""
    for key, peer in want.items():
        if peer["keepalive"]:
            run("wg", "set", iface, "peer", key, "persistent-keepalive", "0")
            run("wg", "set", iface, "peer", key, "persistent-keepalive",
                str(peer["keepalive"]))


def take_down(run: Runner, iface: str, service: str, conf_path: str,
              check_mode: bool) -> list[str]:
    actions = []
    if run.rc("ip", "link", "show", "dev", iface) == 0:
        actions.append(f"take {iface} down")
        if not check_mode:
            if service == "systemd":
                run("systemctl", "disable", "--now", f"wg-quick@{iface}")
            elif os.path.exists(conf_path):
                run("wg-quick", "down", iface)  # reads the file: remove it only after
            else:
                run("ip", "link", "delete", "dev", iface)
    return actions
