"""Routing through an exit node without taking the tunnel down: wg-quick's policy routing and
its nftables table, applied live, the rules that keep the management networks on the main
table, and the refusal to route this run's own SSH connection through the exit node.
Standard library only."""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    MANAGEMENT_RULE_PRIORITY,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import read_text as read
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_runner import ApplyError, Runner


def wg_quick_table(iface: str, family: str) -> tuple[str, str]:
    """Family and name of the nftables table wg-quick makes for a default route."""
    return ("ip" if family == "-4" else "ip6"), f"wg-quick-{iface}"


def wg_quick_firewall(run: Runner, iface: str, family: str, table: int) -> str:
    """The nftables table wg-quick adds with a default route, in its words: drop packets for
    the interface's addresses that arrive elsewhere (anti-spoofing), and carry the tunnel's
    firewall mark on its UDP flows through conntrack (so strict reverse-path filtering
    accepts the replies). One ``nft -f`` transaction: an older copy is replaced atomically."""
    pf, name = wg_quick_table(iface, family)
    nft_table = f"{pf} {name}"
    lines = [f"add table {nft_table}", f"delete table {nft_table}", f"add table {nft_table}",
             f"add chain {nft_table} preraw {{ type filter hook prerouting priority -300; }}",
             f"add chain {nft_table} premangle {{ type filter hook prerouting priority -150; }}",
             f"add chain {nft_table} postmangle {{ type filter hook postrouting priority -150; }}"]
    for addr in re.findall(r"inet6? ([0-9a-f:.]+)/\d+",
                           run("ip", "-o", family, "address", "show", "dev", iface)):
        lines.append(f'add rule {nft_table} preraw iifname != "{iface}" {pf} daddr {addr} '
                     "fib saddr type != local drop")
    lines.append(f"add rule {nft_table} postmangle meta l4proto udp mark {table} "
                 "ct mark set mark")
    lines.append(f"add rule {nft_table} premangle meta l4proto udp meta mark set ct mark")
    return "\n".join(lines) + "\n"


def exit_routing(run: Runner, iface: str, want: dict, check_mode: bool) -> list[str]:
    """A peer with a default route (an exit node) needs wg-quick's policy routing: the
    tunnel's own packets carry a firewall mark and use the main table, everything else looks
    up a table whose default route is the tunnel. wg-quick sets this up only at `up`; doing it
    here lets a host start or stop using an exit node without taking the tunnel down."""
    actions = []
    fwmark = run("wg", "show", iface, "fwmark").strip()
    table = int(fwmark, 16) if fwmark not in ("", "off") else None
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        need = any(default in p["allowed"] for p in want.values())
        rules = run("ip", family, "rule", "show")
        mark_rule = table is not None and re.search(
            rf"not from all fwmark {table:#x} lookup {table}\b", rules) is not None
        suppress = "from all lookup main suppress_prefixlength 0" in rules
        route = table is not None and "default dev" in run(
            "ip", family, "route", "show", "table", str(table), check=False)
        firewall = run.rc("nft", "list", "table", *wg_quick_table(iface, family)) == 0
        if need and not (mark_rule and suppress and route and firewall):
            actions.append(f"route {default} through {iface} (policy routing)")
            if check_mode:
                continue
            if table is None:
                table = 51820
                while (run("ip", "-4", "route", "show", "table", str(table), check=False)
                       or run("ip", "-6", "route", "show", "table", str(table), check=False)):
                    table += 1
                run("wg", "set", iface, "fwmark", str(table))
            run("ip", family, "route", "replace", default, "dev", iface, "table", str(table))
            # Order matters: the suppress rule must come first (lower priority number), so
            # the main table's specific routes, the management path among them, still win
            # over the tunnel's default route. Rules get the next lower number as they are
            # added, so add the mark rule first, then the suppress rule, as wg-quick does.
            if suppress:
                run("ip", family, "rule", "del", "table", "main", "suppress_prefixlength", "0")
            if mark_rule:
                run("ip", family, "rule", "del", "not", "fwmark", str(table), "table", str(table))
            run("ip", family, "rule", "add", "not", "fwmark", str(table), "table", str(table))
            run("ip", family, "rule", "add", "table", "main", "suppress_prefixlength", "0")
            run("nft", "-f", "-", data=wg_quick_firewall(run, iface, family, table))
            if family == "-4":
                run("sysctl", "-q", "net.ipv4.conf.all.src_valid_mark=1")
        elif not need and (mark_rule or route or firewall):
            actions.append(f"stop routing {default} through {iface}")
            if check_mode:
                continue
            if route:
                run("ip", family, "route", "del", default, "dev", iface, "table", str(table))
            if mark_rule:
                run("ip", family, "rule", "del", "not", "fwmark", str(table), "table", str(table))
            if suppress:
                run("ip", family, "rule", "del", "table", "main", "suppress_prefixlength", "0")
            if firewall:
                run("nft", "delete", "table", *wg_quick_table(iface, family))
    return actions


def management_rules(run: Runner, keep: list[str], need: bool, check_mode: bool) -> list[str]:
    """Keep management networks on the main table while an exit node has the default route;
    the rules are ours by their priority, so others' rules are never touched."""
    want = set(keep) if need else set()
    have = set()
    for family in ("-4", "-6"):
        for line in run("ip", family, "rule", "show", "priority",
                        str(MANAGEMENT_RULE_PRIORITY)).splitlines():
            found = re.search(r"\bto (\S+) lookup main\b", line)
            if found:
                have.add(str(ipaddress.ip_network(found.group(1), strict=False)))
    actions = []
    for verb, nets in (("del", sorted(have - want)), ("add", sorted(want - have))):
        for net in nets:
            actions.append(f"{'keep' if verb == 'add' else 'stop keeping'} {net} "
                           "on the main table")
            if not check_mode:
                run("ip", f"-{ipaddress.ip_network(net).version}", "rule", verb, "to", net,
                    "lookup", "main", "priority", str(MANAGEMENT_RULE_PRIORITY))
    return actions


def ssh_client(run: Runner) -> str | None:
    """This run's SSH client: from $SSH_CONNECTION, or (become through sudo resets the
    environment) the peer of the socket held by the sshd this module runs under."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if conn:
        return conn[0]
    pid = os.getpid()
    while pid > 1:
        comm = (read(f"/proc/{pid}/comm") or "").strip()
        if comm in ("sshd", "sshd-session"):
            for line in run("ss", "-Htnp", "state", "established").splitlines():
                if f"pid={pid}," in line:
                    peer = line.split()[3].rsplit(":", 1)[0].strip("[]")
                    return peer.removeprefix("::ffff:")
        status = read(f"/proc/{pid}/status") or ""
        found = re.search(r"^PPid:\s+(\d+)", status, re.M)
        pid = int(found.group(1)) if found else 1
    return None


def refuse_exit_over_ssh(run: Runner, b: dict, host: str) -> str | None:
    """An exit node takes the default route: refuse when this run's SSH client is reached
    through it and is not kept on the main table (the run would cut itself off)."""
    client = ssh_client(run)
    if client is None:
        return None
    try:  # only a parsed address reaches the command line
        addr = ipaddress.ip_address(client)
    except ValueError as exc:
        raise ApplyError(f"cannot tell this run's SSH client: {client[:60]!r} is not an "
                         "address") from exc
    client = str(addr)
    route = run("ip", "-o", "route", "get", client, "fibmatch", check=False)
    nets = [ipaddress.ip_network(n) for n in b["management_networks"]]
    if route.startswith("default") and not any(addr in n for n in nets
                                               if n.version == addr.version):
        raise ApplyError(
            f"{host} reaches this run's SSH client {client} through its default route, which "
            f"use_exit_node {b['uses_exit_node']} would send through the exit node and cut "
            f"the connection. Add {client} (or its network) to network.management_networks "
            "in mesh.yml.")
    return client
