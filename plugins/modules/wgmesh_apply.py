#!/usr/bin/python
"""Host-side: make the host run one bundle (everything the compiler made for it), in one
step, with the last good bundle to return to if any part fails."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_apply
short_description: Make a host run its wgmesh bundle, live, all or nothing
description:
  - A bundle is everything the compiler made for one host (the wg-quick files without a
    private key, the nftables table, the names block, the forwarding settings) with its
    content hash, as the C(wgmesh_compile) action returns it.
  - Compares the host's live state with the bundle and repairs every difference, in one
    module run - the files, the loaded table (each set element and rule, read with
    C(nft -j list table)), the running interfaces (the key they run with, peers, addresses,
    MTU, routes, exit-node routing), the names block, forwarding - and says which in words.
    Nothing differs - nothing is done and C(changed) is false. Check mode reports the same
    differences and changes nothing.
  - Changes are made live - interfaces with C(wg set) for the peers that differ (a peer the
    change leaves alone is not written, so its flows lose nothing) and C(ip), the table by
    one C(nft -f) transaction - so tunnels between unchanged peers keep flowing.
  - All or nothing - the new table is checked with C(nft -c) before anything is changed; if
    any later step fails, the host is returned to the last bundle that applied cleanly (kept
    under I(state_dir)), or with none to its state before wgmesh, and the task fails with
    the cause.
  - Every wgmesh interface's wg-quick file loads the table from C(/etc/wgmesh/nftables.nft)
    before the interface exists (a fixed C(PreUp) hook) and stays down when it cannot, so
    an interface brought up at boot, by hand or by this module never carries a packet
    unfiltered. Between runs that file is the table of the bundle that applied cleanly - a
    failed apply writes the last good one back.
  - Records what the host runs (bundle hash, commit, time, and the table as loaded, to
    notice later edits) in I(state_dir)/state.json.
  - Refuses a bundle that routes the default route through an exit node when this run's SSH
    client is reached through the default route and is not in the management networks.
  - The private key never leaves the key file (C(wg set private-key) reads it there).
  - Split DNS (C(network.split_dns) in mesh.yml) - per-link DNS on the mesh interface
    where systemd-resolved runs, else a dnsmasq of its own on 127.0.0.153 that answers the
    split domains from their nameservers and everything else from the resolvers
    C(/etc/resolv.conf) named before (kept in C(/etc/wgmesh)); C(/etc/resolv.conf) is restored
    when the bundle has no split DNS any more.
  - The mesh resolver (a node with C(resolver) set in mesh.yml) - a dnsmasq of its own, from the
    bundle's C(resolver_conf) written to C(/etc/wgmesh/resolver.conf), on the node's mesh
    addresses only; restarted when its configuration changes, stopped and removed when the
    bundle has none.
  - Where systemd runs the interfaces, installs a drop-in for C(wg-quick@) that, before an
    interface starts, puts back the files of the last bundle that applied whole (so a host
    rebooted half way through an apply comes back on its last good bundle).
  - On a host the policy's ssh rules name as destination, writes the sshd drop-in that lets
    each mesh source log in only as the users the rules name (connections to the host's mesh
    addresses only), checks it with C(sshd -t) and that sshd reads it (C(sshd -T)), then
    reloads sshd (C(systemctl reload) of its unit where systemd runs it, else SIGHUP to the
    pid in I(sshd_pidfile)); a drop-in sshd refuses is taken
    back with the rest of the bundle.
options:
  bundle:
    description: The host's bundle (C(wgmesh_compile)'s C(hosts[<host>].bundle)).
    type: dict
  state:
    description:
      - C(present) makes the host run I(bundle).
      - C(previous) makes the host run the bundle it ran before the current one (a canary
        that failed), or takes it out of the mesh if there was none.
      - C(absent) takes the host out of the mesh - interfaces down, table, files, names block,
        forwarding set by wgmesh and key removed.
    type: str
    choices: [present, absent, previous]
    default: present
  previous_hash:
    description:
      - With I(state=previous), the hash the host ran before (the C(previous) this module
        returned when it applied the current bundle); the host is left alone when it still
        runs it, and the task fails if the bundle kept as previous is another one.
    type: str
  key_file:
    description: The host's private key file (see wgmesh_key); its public key must be the
      one the bundle was compiled for.
    type: path
    required: true
  service:
    description: How to bring an interface up; C(auto) uses systemd's C(wg-quick@) when
      systemd runs, else C(wg-quick up).
    type: str
    choices: [auto, systemd, wg-quick]
    default: auto
  hosts_file:
    description: The hosts file that holds the block of mesh names.
    type: path
    default: /etc/hosts
  state_dir:
    description: Where the host keeps what it runs and the last good bundle.
    type: path
    default: /var/lib/wgmesh
  sshd_config:
    description: sshd's main configuration, which must include I(sshd_dropin) (Debian's
      includes C(/etc/ssh/sshd_config.d/*.conf)).
    type: path
    default: /etc/ssh/sshd_config
  sshd_dropin:
    description: The file the bundle's sshd rules are written to (removed when the bundle
      has none).
    type: path
    default: /etc/ssh/sshd_config.d/wgmesh.conf
  sshd_pidfile:
    description: The running sshd's pid file; it gets SIGHUP to read a changed drop-in.
    type: path
    default: /run/sshd.pid
  manifest:
    description:
      - The signed manifest the bundle comes from (C(wgmesh manifest create) and C(sign);
        C(wgmesh_compile) returns it when mesh.yml has a C(signing) section).
      - A host with a I(trust_file) runs a bundle only when the manifest has at least the
        threshold of valid signatures of the admins it trusts, no signature of any other
        key, a serial no lower than the one it runs (the same serial only for the same
        manifest), and lists the bundle's SHA-256 under the host's name. Anything else is
        refused before the host is touched, with the reason.
      - A manifest stating other admins or another threshold becomes the host's trust once
        it is accepted.
    type: dict
  trust:
    description:
      - Enrolment - the admins (name to ed25519 public key) and C(threshold) to install as
        I(trust_file) when the host has none. A host that has one keeps it; only a manifest
        its admins signed changes it.
    type: dict
  trust_file:
    description: Where the host keeps the admins it trusts, their threshold, and the serial
      and digest of the manifest it runs (kept when the host leaves the mesh).
    type: path
    default: /etc/wgmesh/trust.json
  agent_program:
    description:
      - The NAT traversal agent (a zip application of this collection's module_utils,
        base64), installed as C(agent.pyz) in I(state_dir) when the bundle has an agent part
        (lighthouses, and nodes behind NAT with relayed peers) and removed when it has none.
        Where systemd runs, the module also installs, enables and (re)starts
        C(wgmesh-agent.service); elsewhere the host's supervisor runs
        C(python3 STATE_DIR/agent.pyz).
      - C(wgmesh_compile) returns it as C(agent_program).
    type: str
  monitor_program:
    description:
      - The monitor (a zip application of this collection's module_utils, base64), installed
        as C(monitor.pyz) in I(state_dir) on every host that runs a bundle. It writes the
        node_exporter textfile I(metrics_textfile) every I(metrics_interval) seconds and
        logs the flows the policy denies (C(network.log_denied) in mesh.yml). Where systemd
        runs, the module installs, enables and (re)starts C(wgmesh-monitor.service);
        elsewhere the host's supervisor runs C(python3 STATE_DIR/monitor.pyz).
      - C(wgmesh_compile) returns it as C(monitor_program).
    type: str
  metrics_textfile:
    description:
      - The node_exporter textfile the monitor writes (whole, by rename); empty for none.
        The default is the folder Debian's prometheus-node-exporter reads.
    type: str
    default: /var/lib/prometheus/node-exporter/wgmesh.prom
  metrics_interval:
    description: Seconds between two writes of I(metrics_textfile) (1 to 3600).
    type: int
    default: 15
  root:
    description:
      - Write the bundle's files (and the names block, and the bundle as the record of what
        runs) under this directory on the host, as they would be under C(/), and touch
        nothing live - for an image or a chroot to boot into the mesh. The files go through
        the connection (no Python runs on the host); only files that differ are written.
        Nothing is validated with C(nft -c) and no key is checked.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Every file and the names block before and after, and the running peers.
author: wgmesh
"""

EXAMPLES = r"""
- name: Make the host run its part of the mesh
  wgmesh_apply:
    bundle: "{{ plan.hosts[inventory_hostname].bundle }}"
    key_file: /etc/wireguard/wg0.key

- name: Take a host that left the mesh out of it
  wgmesh_apply:
    state: absent
    key_file: /etc/wireguard/wg0.key
"""

RETURN = r"""
serial:
  description: The serial of the signed manifest the host runs (with a trust file).
  returned: when the host has a trust file
  type: int
actions:
  description: Every difference found, in words, and what was (in check mode, would be) done.
  returned: always
  type: list
  elements: str
  sample: ["table inet wgmesh: set in4 has 1 element not in the bundle", "load the table"]
drift:
  description: Differences from the bundle the host was recorded as running (edits by hand).
  returned: always
  type: list
  elements: str
hash:
  description: Hash of the bundle the host runs now.
  returned: always
  type: str
previous:
  description: Hash of the bundle the host ran before (null for a host new to wgmesh).
  returned: always
  type: str
applied:
  description: What the host was recorded as running before this task - C(hash),
    C(commit), C(applied) (UTC time); nulls for a host new to wgmesh.
  returned: when state is present
  type: dict
ssh_client:
  description: This run's SSH client as the host sees it (checked against exit-node routing).
  returned: when the bundle uses an exit node
  type: str
peers:
  description: Number of peers on the mesh interface.
  returned: always
  type: int
seconds:
  description: How long the comparison and the apply took on the host.
  returned: success
  type: float
"""

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

# What the controller renders and this module must agree on, in one copy (Ansible packs it
# into this module's payload): the bundle's format and hash, canonical JSON, the paths.
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_bundle import (
    SSHD_DROPIN,
    SYSCTL_PATH,
    BundleError,
    bundle_files,
    check_bundle,
    with_hosts_block,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DNSMASQ_CONF,
    DNSMASQ_PID,
    KEY_TEXT,
    MANAGEMENT_RULE_PRIORITY,
    MONITOR_CONFIG,
    MONITOR_PROGRAM,
    RESOLVER_CONF,
    RESOLVER_PID,
    RULESET_PATH,
    bundle_digest,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    read_text as read,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_files import (
    write_atomic as write_file,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_keys import public_of
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_nftables import (
    LIST_TABLE,
    TABLE,
    canonical_table,
    in_place,
    ruleset_stamp,
    table_drift,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
    Refused,
    valid_trust,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_trust import (
    verify as verify_signed,
)
from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_wireguard import (
    desired_peers,
    parse_conf,
    parse_dump,
    peer_names,
)

# The table's file, which every wgmesh interface's wg-quick file loads before the interface
# exists (its PreUp hook), so it is not a choice of the caller.
RULESET = RULESET_PATH


class ApplyError(Exception):
    """A step failed; the host is returned to its last good bundle."""


class Runner:
    """The one place that runs wg, wg-quick, ip, nft, sysctl and systemctl."""

    def __init__(self, module: AnsibleModule):
        self.module = module

    def __call__(self, *argv: str, check: bool = True, data: str | None = None) -> str:
        rc, out, err = self.module.run_command(list(argv), data=data, binary_data=True)
        if check and rc != 0:
            raise ApplyError(f"{' '.join(argv)} failed ({rc}): {redact(err.strip())}")
        return out if rc == 0 else ""

    def rc(self, *argv: str, data: str | None = None) -> int:
        return self.module.run_command(list(argv), data=data, binary_data=True)[0]

    def output(self, *argv: str) -> tuple[int, str]:
        """Return code and output of a command that prints a lot (a table, a thousand
        peers): run_command reads in small chunks, which costs more than the command."""
        path = self.module.get_bin_path(argv[0], required=True)
        done = subprocess.run([path, *argv[1:]], capture_output=True, text=True, check=False)
        return done.returncode, done.stdout


# wg and wg-quick may echo the line of a configuration they refuse, and that line can hold
# the private key: their output is reported with every key-shaped string replaced.
def redact(text: str) -> str:
    """Command output safe to report: every key-shaped string replaced."""
    return KEY_TEXT.sub("(key redacted)", text)


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
    write_atomic(path, head, 0o600)
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


def live_table(run: Runner) -> str | None:
    """The loaded table as canonical_table gives it; None when it is not loaded."""
    rc, text = run.output(*LIST_TABLE)
    return canonical_table(text) if rc == 0 else None


def load_table(run: Runner, ruleset: str, live: str | None) -> list[str]:
    """Load the bundle's table: changed in place where one is loaded (no untouched flow loses
    a packet, see in_place), else (or when nft refuses the change, as from a table of
    another layout) replaced whole. Either way one atomic transaction."""
    if live is not None and run.rc("nft", "-f", "-", data=in_place(ruleset, live)) == 0:
        return []
    run("nft", "-f", RULESET)
    return [] if live is None else [f"table {' '.join(TABLE)}: replaced whole (nft refused "
                                    "to change it in place)"]


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str, text: str | bytes | None, mode: int) -> None:
    """Replace a file whole (a reader sees the old or the new one), or remove it (None); its
    folder is made (0755) when missing."""
    write_file(path, text, mode, dir_mode=0o755)


FORWARDING = {"/proc/sys/net/ipv4/ip_forward": "1",
              "/proc/sys/net/ipv6/conf/all/forwarding": "1"}




# A reboot half way through an apply may leave files of two bundles on disk. Where systemd
# runs the interfaces, each wg-quick@ start first puts back the files of the last bundle
# that applied whole: a drop-in runs this fixed script with the list the apply writes as
# its last step (LAST_GOOD_FILES in the state folder). Interfaces wgmesh does not run are
# left alone.
LAST_GOOD_FILES = "last-good-files.json"
LAST_GOOD_SCRIPT = "/usr/local/lib/wgmesh/last-good"
LAST_GOOD_DROPIN = "/etc/systemd/system/wg-quick@.service.d/wgmesh-last-good.conf"
LAST_GOOD_SCRIPT_TEXT = """#!/usr/bin/env python3
# wgmesh: before wg-quick@IFACE starts, put back the files of the last bundle that applied
# whole (an apply a reboot interrupted may have written some of the next one's). Fixed text.
import json
import os
import sys

try:
    with open(sys.argv[2]) as fh:
        last = json.load(fh)
except (OSError, ValueError):
    sys.exit(0)
if sys.argv[1] not in last["interfaces"]:
    sys.exit(0)
for path, text, mode in last["files"]:
    try:
        with open(path) as fh:
            have = fh.read()
    except OSError:
        have = None
    if have == text:
        continue
    print(f"wgmesh: {path} is not the last good bundle's ({last['hash']}): put back")
    if text is None:
        os.unlink(path)
        continue
    tmp = f"{path}.wgmesh-{os.getpid()}"  # wg0 and wg0-hop may start together
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
"""


# The state folder lands on a systemd command line (LAST_GOOD_DROPIN): main() lets through
# only a plain absolute path, whole-string (no space, quote, '%', '$' or line end).
PLAIN_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")


AGENT_PROGRAM = "agent.pyz"
LEGACY_AGENT = "agent.py"  # what wgmesh installed before the agent was a zip
AGENT_SERVICE = "wgmesh-agent.service"
MONITOR_SERVICE = "wgmesh-monitor.service"
UNITS = "/etc/systemd/system/"
# The programs a host runs beside its interface: state-folder file, service, what it does,
# and what its service may do (capabilities, socket families).
PROGRAMS = {
    "agent": (AGENT_PROGRAM, AGENT_SERVICE, "direct paths between nodes behind NAT",
              "CAP_NET_ADMIN CAP_NET_RAW", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    "monitor": (MONITOR_PROGRAM, MONITOR_SERVICE, "metrics and denied-flow logs",
                "CAP_NET_ADMIN", "AF_UNIX AF_NETLINK"),
}
DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/wgmesh.prom"


def program_unit(kind: str, state_dir: str, interface: str, writable: str = "") -> str:
    """A program as a service, with what it needs and no more: wg(8) and nft(8)
    (CAP_NET_ADMIN; the agent's socket bound to the mesh interface: CAP_NET_RAW), its files
    in state_dir (and ``writable``)."""
    program, _, what, caps, families = PROGRAMS[kind]
    return (
        f"[Unit]\nDescription=wgmesh {kind}: {what}\n"
        f"After=network-online.target wg-quick@{interface}.service\nWants=network-online.target\n\n"
        f"[Service]\nExecStart=/usr/bin/python3 {os.path.join(state_dir, program)} "
        f"--state-dir {state_dir}\nRestart=always\nRestartSec=2\n"
        f"CapabilityBoundingSet={caps}\nNoNewPrivileges=yes\n"
        f"ProtectSystem=strict\nReadWritePaths={state_dir} -/run/wireguard"
        f"{' ' + writable if writable else ''}\n"
        "ProtectHome=yes\nPrivateTmp=yes\nProtectKernelModules=yes\n"
        f"ProtectControlGroups=yes\nRestrictAddressFamilies={families}\n"
        "LockPersonality=yes\nMemoryDenyWriteExecute=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n")


def last_good_dropin(state_dir: str) -> str:
    return ("# wgmesh: an interrupted apply never leaves an interface on half a bundle.\n"
            "[Service]\n"
            f"ExecStartPre=/usr/bin/env python3 {LAST_GOOD_SCRIPT} %i "
            f"{os.path.join(state_dir, LAST_GOOD_FILES)}\n")


def sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/sbin/sshd")
                                         if os.path.exists(p)), None)


def check_sshd(config: str, dropin_text: str, dropin: str) -> None:
    """sshd accepts its configuration with the drop-in, and reads the drop-in: a connection
    to the host's mesh address gets the drop-in's AllowUsers or DenyUsers."""
    sshd = sshd_binary()
    if sshd is None:
        raise ApplyError("the policy's ssh rules name this host, but sshd is not installed")
    done = subprocess.run([sshd, "-t", "-f", config], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ApplyError(f"sshd refuses its configuration with {dropin}: "
                         f"{(done.stderr + done.stdout).strip()[:300]}")
    found = re.search(r"^Match LocalAddress ([0-9.]+),", dropin_text, re.M)
    if found is None:
        raise ApplyError(f"the bundle's sshd rules for {dropin} have no mesh address")
    done = subprocess.run([sshd, "-T", "-f", config, "-C",
                           f"user=wgmesh-check,host=wgmesh-check,addr=192.0.2.1,"
                           f"laddr={found.group(1)}"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or not re.search(r"^(allowusers|denyusers) ", done.stdout, re.M):
        raise ApplyError(f"sshd does not read {dropin}: add 'Include "
                         f"{os.path.dirname(dropin)}/*.conf' at the top of {config}")


# Split DNS without systemd-resolved: a dnsmasq of our own on a loopback address answers the
# split domains from their nameservers and everything else from the resolvers the host had.
# The mesh interface's wg-quick file starts it again at boot (the contract's DNSMASQ_CONF).
DNSMASQ_ADDRESS = "127.0.0.153"
# The resolvers /etc/resolv.conf named before (dnsmasq drops root, so not in state_dir).
UPSTREAM = "/etc/wgmesh/upstream-resolv.conf"
RESOLV_CONF = "/etc/resolv.conf"
def resolved_runs() -> bool:
    return os.path.isdir("/run/systemd/resolve") and shutil.which("resolvectl") is not None


def sync_resolved(run: Runner, iface: str, dns: dict | None, check_mode: bool) -> list[str]:
    """Per-link DNS on the mesh interface: its nameservers and ~domains (routing only)."""
    want_servers = sorted({s for servers in (dns or {}).values() for s in servers})
    want_domains = sorted(f"~{d}" for d in (dns or {}))
    have_servers = _link_setting(run("resolvectl", "dns", iface, check=False))
    have_domains = _link_setting(run("resolvectl", "domain", iface, check=False))
    if (want_servers, want_domains) == (have_servers, have_domains):
        return []
    if not check_mode:
        if dns:
            run("resolvectl", "dns", iface, *want_servers)
            run("resolvectl", "domain", iface, *want_domains)
        else:
            run("resolvectl", "revert", iface)
    return [f"per-link DNS on {iface}: {' '.join(want_domains) or 'none'}"]


def _link_setting(text: str) -> list[str]:
    """The values of `resolvectl dns|domain IFACE` ("Link 7 (wg0): a b"); none when it
    printed something else (no such link yet, resolved not answering)."""
    for line in text.splitlines():
        if line.startswith("Link ") and ":" in line:
            return sorted(line.split(":", 1)[1].split())
    return []


def dnsmasq_conf(dns: dict, upstream: str) -> str:
    lines = ["# wgmesh: split DNS. Generated; holds no secret.",
             f"listen-address={DNSMASQ_ADDRESS}", "bind-interfaces", "port=53",
             f"pid-file={DNSMASQ_PID}", f"resolv-file={upstream}", "no-poll", "cache-size=1000"]
    for domain in sorted(dns):
        lines += [f"server=/{domain}/{server}" for server in dns[domain]]
    return "\n".join(lines) + "\n"


def our_resolv_conf(original: str) -> str:
    """Our resolver first; the host's search and options lines kept."""
    kept = [line for line in original.splitlines()
            if line.split()[:1] and line.split()[0] in ("search", "domain", "options")]
    return "\n".join(["# wgmesh: split DNS through a local resolver; the resolvers this "
                      "file named before are in", "# its upstream list. `wgmesh` restores "
                      "this file when split DNS goes away.", f"nameserver {DNSMASQ_ADDRESS}",
                      *kept]) + "\n"


def dnsmasq_pid(pidfile: str) -> int | None:
    """The pid of the dnsmasq (wgmesh's split-DNS one, or the mesh resolver) whose pid file
    this is, if it runs."""
    try:
        pid = int((read(pidfile) or "").strip())
    except ValueError:
        return None
    return pid if "dnsmasq" in (read(f"/proc/{pid}/comm") or "") else None


def stop_dnsmasq(pidfile: str) -> None:
    pid = dnsmasq_pid(pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)


def sync_dnsmasq(run: Runner, dns: dict | None, check_mode: bool) -> list[str]:
    upstream = UPSTREAM
    actions = []
    if not dns:
        if dnsmasq_pid(DNSMASQ_PID) is not None or os.path.exists(DNSMASQ_CONF):
            actions.append("stop the split-DNS resolver")
            if not check_mode:
                stop_dnsmasq(DNSMASQ_PID)
                write_atomic(DNSMASQ_CONF, None, 0o644)
        original = read(upstream)
        if original is not None:
            actions.append(f"restore {RESOLV_CONF}")
            if not check_mode:
                write_system_file(RESOLV_CONF, original)
                os.unlink(upstream)
        return actions
    if shutil.which("dnsmasq") is None:
        raise ApplyError("split DNS needs dnsmasq where systemd-resolved does not run: install "
                         "dnsmasq-base (wgmesh_manage_packages does)")
    current = read(RESOLV_CONF) or ""
    original = read(upstream)
    if original is None or (current != our_resolv_conf(original)
                            and not current.startswith("# wgmesh: split DNS")):
        original = current  # first time, or something (a DHCP client) rewrote it since
        actions.append(f"keep the host's resolvers from {RESOLV_CONF} as upstream")
        if not check_mode:
            write_atomic(upstream, original, 0o644)
    conf = dnsmasq_conf(dns, upstream)
    restart = dnsmasq_pid(DNSMASQ_PID) is None
    if read(DNSMASQ_CONF) != conf:
        actions.append(f"write {DNSMASQ_CONF}")
        restart = True
        if not check_mode:
            write_atomic(DNSMASQ_CONF, conf, 0o644)
    if restart or actions:
        actions.append("start the split-DNS resolver (dnsmasq)")
        if not check_mode:
            stop_dnsmasq(DNSMASQ_PID)
            run("dnsmasq", f"--conf-file={DNSMASQ_CONF}")
    if current != our_resolv_conf(original):
        actions.append(f"point {RESOLV_CONF} at the split-DNS resolver")
        if not check_mode:
            write_system_file(RESOLV_CONF, our_resolv_conf(original))
    return actions


def sync_resolver(run: Runner, conf: str | None, check_mode: bool) -> list[str]:
    """The mesh resolver runs the bundle's configuration, or does not run at all."""
    if conf is None:
        if dnsmasq_pid(RESOLVER_PID) is None and not os.path.exists(RESOLVER_CONF):
            return []
        if not check_mode:
            stop_dnsmasq(RESOLVER_PID)
            write_atomic(RESOLVER_CONF, None, 0o644)
        return ["stop the mesh resolver"]
    if shutil.which("dnsmasq") is None:
        raise ApplyError("the mesh resolver needs dnsmasq: install dnsmasq-base "
                         "(wgmesh_manage_packages does)")
    actions = []
    if read(RESOLVER_CONF) != conf:
        actions.append(f"write {RESOLVER_CONF}")
        if not check_mode:
            write_atomic(RESOLVER_CONF, conf, 0o644)
    if actions or dnsmasq_pid(RESOLVER_PID) is None:
        actions.append("start the mesh resolver (dnsmasq)")
        if not check_mode:
            stop_dnsmasq(RESOLVER_PID)
            run("dnsmasq", f"--conf-file={RESOLVER_CONF}")
    return actions


def reload_sshd(run: Runner, pidfile: str) -> str:
    """sshd re-reads its configuration (open sessions stay): through systemd where systemd
    runs it (Debian's ssh.service, elsewhere sshd.service), so the unit's own reload runs and
    the journal says so; else SIGHUP to the pid in its pid file."""
    if os.path.isdir("/run/systemd/system"):
        for unit in ("ssh.service", "sshd.service"):
            if run.rc("systemctl", "is-active", "--quiet", unit) == 0:
                run("systemctl", "reload", unit)
                return f"reload {unit}"
    try:
        pid = int((read(pidfile) or "").strip())
    except ValueError:
        pid = 0
    # A stale pid file may name another process by now: only an sshd gets the signal.
    if pid <= 1 or not (read(f"/proc/{pid}/comm") or "").startswith("sshd"):
        return f"sshd is not running ({pidfile}): it reads the drop-in when it starts"
    os.kill(pid, signal.SIGHUP)
    return "reload sshd"


class Host:
    """One host's paths and tools; ``converge`` makes it run a bundle."""

    def __init__(self, module: AnsibleModule):
        p = module.params
        self.module, self.run = module, Runner(module)
        self.key_file = p["key_file"]
        self.sshd_config, self.sshd_dropin = p["sshd_config"], p["sshd_dropin"]
        self.sshd_pidfile = p["sshd_pidfile"]
        self.hosts_file, self.state_dir = p["hosts_file"], p["state_dir"]
        self.agent_program, self.monitor_program = (
            base64.b64decode(p[k]) if p.get(k) is not None else None
            for k in ("agent_program", "monitor_program"))
        self.textfile, self.metrics_interval = p["metrics_textfile"], p["metrics_interval"]
        service = p["service"]
        if service == "auto":
            service = "systemd" if os.path.isdir("/run/systemd/system") else "wg-quick"
        self.service = service
        self.diff_before: list[str] = []
        self.diff_after: list[str] = []

    def files(self, b: dict) -> list[tuple[str, str | None, int]]:
        files = bundle_files(b, self.sshd_dropin)
        if self.service == "systemd":
            files += [(LAST_GOOD_SCRIPT, LAST_GOOD_SCRIPT_TEXT, 0o755),
                      (LAST_GOOD_DROPIN, last_good_dropin(self.state_dir), 0o644)]
        return files

    def program_files(self, b: dict | None) -> dict[str, list[tuple[str, object, int]]]:
        """Per program, its files (content None: removed) and, where systemd runs, its unit.
        The agent runs where the bundle has an agent part, the monitor wherever a bundle
        runs; without the program (an older controller) what is installed stays."""
        out: dict[str, list[tuple[str, object, int]]] = {}
        for kind, given in (("agent", self.agent_program), ("monitor", self.monitor_program)):
            wanted = b is not None and (kind == "monitor" or b.get("agent") is not None)
            if wanted and given is None:
                continue
            program, service = PROGRAMS[kind][:2]
            files: list[tuple[str, object, int]] = [
                (os.path.join(self.state_dir, program), given if wanted else None, 0o644)]
            if kind == "agent":
                files.append((os.path.join(self.state_dir, LEGACY_AGENT), None, 0o644))
            writable = ""
            if kind == "monitor":
                config = {"textfile": self.textfile, "interval": self.metrics_interval,
                          "key_file": self.key_file}
                files.append((os.path.join(self.state_dir, MONITOR_CONFIG),
                              json.dumps(config, indent=1) + "\n" if wanted else None, 0o644))
                writable = f"-{os.path.dirname(self.textfile)}" if self.textfile else ""
            if self.service == "systemd":
                files.append((UNITS + service, program_unit(
                    kind, self.state_dir, b["interface"], writable) if wanted else None, 0o644))
            out[kind] = files
        return out

    def sync_programs(self, b: dict | None, check_mode: bool) -> list[str]:
        """Install, (re)start or remove the agent and the monitor, after the bundle they
        read is recorded (b None: the host leaves, both go)."""
        run, actions = self.run, []
        for kind, files in self.program_files(b).items():
            service, changed = PROGRAMS[kind][1], False
            for path, content, mode in files:
                data = content.encode() if isinstance(content, str) else content
                if read_bytes(path) == data:
                    continue
                changed = True
                actions.append(f"{'write' if data is not None else 'remove'} {path}")
                if check_mode:
                    continue
                if data is None and path == UNITS + service:
                    run.rc("systemctl", "disable", "--now", service)
                write_atomic(path, data, mode)
            wanted = files[0][1] is not None
            if self.service != "systemd":
                continue
            if not wanted:
                if changed and not check_mode:
                    run("systemctl", "daemon-reload")
                continue
            active = run.rc("systemctl", "is-active", "--quiet", service) == 0
            if changed or not active:
                actions.append(f"{'restart' if active else 'start'} {service}")
                if not check_mode:
                    run("systemctl", "daemon-reload")
                    run("systemctl", "enable", service)
                    run("systemctl", "restart", service)
        if b is not None and self.textfile and not check_mode:
            # The monitor's service may write only to a folder that exists.
            os.makedirs(os.path.dirname(self.textfile), mode=0o755, exist_ok=True)
        return actions

    def state(self) -> dict:
        text = read(os.path.join(self.state_dir, "state.json"))
        return json.loads(text) if text else {}

    def last_good(self) -> dict | None:
        text = read(os.path.join(self.state_dir, "bundle.json"))
        return json.loads(text) if text else None

    def record(self, b: dict) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - hosts' Python < 3.11
        # The ruleset's stamp before the table is read: while it stays, the monitor knows
        # the table is this one without listing it.
        stamp = ruleset_stamp()
        state = {"hash": b["hash"], "commit": b.get("commit"), "name": b["name"],
                 "applied": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "table": live_table(self.run), "ruleset": stamp}
        last = self.last_good()
        if last is not None and last.get("hash") != b["hash"]:
            # What a canary failure returns to (state=previous).
            write_atomic(os.path.join(self.state_dir, "previous.json"), json.dumps(last), 0o600)
        write_atomic(os.path.join(self.state_dir, "bundle.json"), json.dumps(b), 0o600)
        write_atomic(os.path.join(self.state_dir, "state.json"), json.dumps(state), 0o600)
        # Last: what a boot puts back if the next apply is interrupted (LAST_GOOD_SCRIPT).
        write_atomic(os.path.join(self.state_dir, LAST_GOOD_FILES), json.dumps(
            {"hash": b["hash"], "interfaces": [b["interface"], b["hop_interface"]],
             "files": bundle_files(b, self.sshd_dropin)}), 0o600)

    def converge(self, b: dict, check_mode: bool, reload_table: bool = False) -> list[str]:
        """Compare the host with bundle ``b`` and repair every difference."""
        run, actions = self.run, []
        state = self.state()
        sshd_changed = units_changed = False
        for path, text, mode in self.files(b):
            old = read(path)
            if old != text:
                actions.append(f"{'write' if text is not None else 'remove'} {path}")
                self.diff_before.append(f"--- {path}\n{old or ''}")
                self.diff_after.append(f"+++ {path}\n{text or ''}")
                sshd_changed |= path == self.sshd_dropin
                units_changed |= path == LAST_GOOD_DROPIN
                if not check_mode:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    write_atomic(path, text, mode)
        if units_changed and not check_mode:
            run("systemctl", "daemon-reload")
        if sshd_changed and not check_mode:
            if b.get("sshd"):
                check_sshd(self.sshd_config, b["sshd"], self.sshd_dropin)
            actions.append(reload_sshd(run, self.sshd_pidfile))
        live = live_table(run)
        if state.get("hash") == b["hash"] and isinstance(state.get("table"), str):
            drift = table_drift(state["table"], live)
        else:
            drift = [] if live is not None else [f"table {' '.join(TABLE)} is not loaded"]
            reload_table = True
        actions += [f"table {' '.join(TABLE)}: {w}" for w in drift]
        if reload_table or drift:
            actions.append(f"load the table from {RULESET}")
            if not check_mode:
                actions += load_table(run, b["nftables"], live)
        if b["sysctl"]:
            for path, value in FORWARDING.items():
                if (read(path) or "").strip() != value:
                    actions.append(f"{path} is not {value}: apply {SYSCTL_PATH}")
                    if not check_mode:
                        run("sysctl", "-q", "-p", SYSCTL_PATH)
                    break

        hop, wg = b["hop_interface"], b["interface"]
        if b["hop_conf"] is not None:
            actions += sync_interface(run, hop, b["hop_conf"], self.key_file, self.service,
                                      [], check_mode)
        else:
            actions += take_down(run, hop, self.service, f"/etc/wireguard/{hop}.conf",
                                 check_mode)
        # The agent moves relayed peers to a direct path and back: their endpoints are live
        # state, never drift (everything else of them is compared as usual).
        roaming = {p["public_key"] for p in (b.get("agent") or {}).get("punch", [])}
        actions += sync_interface(run, wg, b["wg_conf"], self.key_file, self.service,
                                  b["management_networks"], check_mode, roaming)

        text = read(self.hosts_file) or ""
        new = with_hosts_block(text, wg, b["hosts_block"] or None)
        if new != text:
            actions.append(f"write the mesh names in {self.hosts_file}")
            self.diff_before.append(f"--- {self.hosts_file}\n{text}")
            self.diff_after.append(f"+++ {self.hosts_file}\n{new}")
            if not check_mode:
                write_system_file(self.hosts_file, new)
        if resolved_runs():
            actions += sync_resolved(run, wg, b.get("dns"), check_mode)
        else:
            actions += sync_dnsmasq(run, b.get("dns"), check_mode)
        actions += sync_resolver(run, b.get("resolver_conf"), check_mode)
        return actions

    def leave(self, interface: str, hop_interface: str, check_mode: bool,
              keep_key: bool = False) -> list[str]:
        """Take the host out of the mesh: everything a bundle made, and the key."""
        run, actions = self.run, []
        for iface in (hop_interface, interface):
            actions += take_down(run, iface, self.service, f"/etc/wireguard/{iface}.conf",
                                 check_mode)
        if run.rc("nft", "list", "table", *TABLE) == 0:
            actions.append(f"delete table {' '.join(TABLE)}")
            if not check_mode:
                run("nft", "delete", "table", *TABLE)
        forwarded = os.path.exists(SYSCTL_PATH)
        dropin_installed = os.path.exists(LAST_GOOD_DROPIN)
        actions += self.sync_programs(None, check_mode)
        if not resolved_runs():  # (resolved forgets a link's DNS when the link goes)
            actions += sync_dnsmasq(run, None, check_mode)
        actions += sync_resolver(run, None, check_mode)
        if os.path.exists(self.sshd_dropin):
            actions.append(f"remove {self.sshd_dropin}")
            if not check_mode:
                os.unlink(self.sshd_dropin)
                actions.append(reload_sshd(run, self.sshd_pidfile))
        for path in (f"/etc/wireguard/{interface}.conf", f"/etc/wireguard/{hop_interface}.conf",
                     RULESET, SYSCTL_PATH, *([] if keep_key else [self.key_file]),
                     LAST_GOOD_DROPIN, LAST_GOOD_SCRIPT,
                     *([self.textfile] if self.textfile else []),
                     *(os.path.join(self.state_dir, f) for f in (
                         "state.json", "bundle.json", "previous.json", LAST_GOOD_FILES,
                         "agent.json", "denied.json", "monitor-state.json"))):
            if os.path.exists(path):
                actions.append(f"remove {path}")
                if not check_mode:
                    os.unlink(path)
        for directory in (os.path.dirname(RULESET), self.state_dir,
                          os.path.dirname(LAST_GOOD_SCRIPT), os.path.dirname(LAST_GOOD_DROPIN)):
            if os.path.isdir(directory) and not os.listdir(directory) and not check_mode:
                os.rmdir(directory)
        if dropin_installed and not check_mode:
            run("systemctl", "daemon-reload")
        if forwarded:
            actions.append("stop forwarding")
            if not check_mode:
                for path in FORWARDING:
                    with open(path, "w") as fh:
                        fh.write("0\n")
        text = read(self.hosts_file) or ""
        new = with_hosts_block(text, interface, None)
        if new != text:
            actions.append(f"remove the mesh names from {self.hosts_file}")
            if not check_mode:
                write_system_file(self.hosts_file, new)
        return actions


def write_system_file(path: str, text: str) -> None:
    """/etc/hosts and /etc/resolv.conf may be bind mounts (containers): written in place
    when they cannot be replaced."""
    try:
        write_atomic(path, text, 0o644)
    except OSError:
        with open(path, "w") as fh:
            fh.write(text)


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


TRUST_FILE = "/etc/wgmesh/trust.json"


def verify_manifest(signed: dict, trust: dict, b: dict) -> dict:
    """The rules every signed manifest is held to (module_utils/wgmesh_trust, the same the
    controller uses), plus: the manifest lists this bundle. Returns the trust to record."""
    try:
        import nacl.signing  # noqa: F401
    except ImportError as exc:
        raise ApplyError("checking signed manifests needs PyNaCl on the host (Debian: "
                         "python3-nacl; wgmesh_manage_packages installs it)") from exc
    try:
        _, digest = verify_signed(signed, trust, trust)
    except Refused as exc:
        raise ApplyError(f"refused: {exc}") from exc
    body = signed["manifest"]
    serial = body["serial"]
    if body["bundles"].get(b["name"]) != bundle_digest(b):
        raise ApplyError(f"refused: the manifest (serial {serial}) does not list this bundle "
                         f"for {b['name']}: it was not compiled from the signed inputs")
    try:
        new = check_trust(body["trust"])
    except ApplyError as exc:
        raise ApplyError("refused: the manifest states no valid admins and threshold") from exc
    return {"admins": new["admins"], "threshold": new["threshold"], "serial": serial,
            "digest": digest, "date": body["date"]}


def check_trust(trust) -> dict:
    if not valid_trust(trust):
        raise ApplyError("the trust (admins, each with a key of its own, and threshold) is "
                         "not valid")
    return trust


def main() -> None:
    started = time.monotonic()
    # A connection cut mid-apply must not cut the transaction half-way: the apply (or its
    # rollback) finishes on the host whatever happens to the session it was started from.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    module = AnsibleModule(
        argument_spec={
            "bundle": {"type": "dict"},
            "state": {"type": "str", "default": "present",
                      "choices": ["present", "absent", "previous"]},
            "previous_hash": {"type": "str"},
            "key_file": {"type": "path", "required": True, "no_log": False},
            "service": {"type": "str", "default": "auto",
                        "choices": ["auto", "systemd", "wg-quick"]},
            "hosts_file": {"type": "path", "default": "/etc/hosts"},
            "state_dir": {"type": "path", "default": "/var/lib/wgmesh"},
            "sshd_config": {"type": "path", "default": "/etc/ssh/sshd_config"},
            "sshd_dropin": {"type": "path", "default": SSHD_DROPIN},
            "sshd_pidfile": {"type": "path", "default": "/run/sshd.pid"},
            "root": {"type": "path"},
            "agent_program": {"type": "str"},
            "monitor_program": {"type": "str"},
            "metrics_textfile": {"type": "str", "default": DEFAULT_TEXTFILE},
            "metrics_interval": {"type": "int", "default": 15},
            "manifest": {"type": "dict"},
            "trust": {"type": "dict"},
            "trust_file": {"type": "path", "default": TRUST_FILE},
        },
        required_if=[("state", "present", ["bundle"])],
        supports_check_mode=True,
    )
    if os.geteuid() != 0:
        module.fail_json(msg="wgmesh needs root on this host (WireGuard keys, interfaces, "
                         "nftables): connect as root, or as a user with sudo and "
                         "ansible_become: true (group_vars/all.yml beside mesh.yml)")
    for name in ("state_dir", "metrics_textfile"):  # both land on a systemd command line
        value = module.params[name]
        if not PLAIN_PATH.fullmatch(value) and (name == "state_dir" or value):
            module.fail_json(msg=f"{name} {value!r} is not a plain absolute path (letters, "
                             "digits, '.', '_', '-' and '/')")
    if not 1 <= module.params["metrics_interval"] <= 3600:
        module.fail_json(msg="metrics_interval must be 1 to 3600 seconds")
    host = Host(module)
    check_mode = module.check_mode
    before = host.state()
    trust_file = module.params["trust_file"]
    try:
        on_disk = json.loads(read(trust_file) or "null")
    except ValueError:
        module.fail_json(msg=f"{trust_file} is not JSON: the host's trust is damaged")
    if on_disk is not None and module.params["state"] == "previous":
        module.fail_json(msg=f"refused: this host takes only signed manifests ({trust_file}), "
                         "and going back to the bundle before is going back to an older one")
    if module.params["state"] == "absent":
        last = host.last_good() or {}
        try:
            actions = host.leave(last.get("interface", "wg0"),
                                 last.get("hop_interface", "wg0-hop"), check_mode)
        except ApplyError as exc:
            module.fail_json(msg=str(exc))
        module.exit_json(changed=bool(actions), actions=actions, drift=[], hash=None,
                         previous=before.get("hash"), peers=0)

    b = module.params["bundle"]
    if module.params["root"]:
        module.fail_json(msg="root is handled by the wgmesh_apply action on the controller")
    if module.params["state"] == "previous":
        target = module.params["previous_hash"]
        if target and target == before.get("hash"):  # this run did not change the host
            module.exit_json(changed=False, actions=[], drift=[], hash=target,
                             previous=target, peers=0)
        text = read(os.path.join(host.state_dir, "previous.json"))
        if text is not None and target and json.loads(text).get("hash") != target:
            module.fail_json(msg=f"cannot return to bundle {target}: the host kept "
                             f"{json.loads(text).get('hash')} as its previous one")
        if text is None:  # wgmesh never ran here before this bundle: take it out again
            last = host.last_good() or {}
            try:
                actions = host.leave(last.get("interface", "wg0"),
                                     last.get("hop_interface", "wg0-hop"), check_mode,
                                     keep_key=True)
            except ApplyError as exc:
                module.fail_json(msg=str(exc))
            module.exit_json(changed=bool(actions), actions=actions, drift=[], hash=None,
                             previous=before.get("hash"), peers=0)
        b = json.loads(text)
    result = {"previous": before.get("hash"), "hash": b.get("hash"),
              "applied": {k: before.get(k) for k in ("hash", "commit", "applied")}}
    accepted = None
    try:
        check_bundle(b)
        trust = on_disk
        if trust is None and module.params["trust"] is not None:  # enrolment
            trust = dict(check_trust(module.params["trust"]), serial=0, digest=None)
        if trust is not None:
            if module.params["manifest"] is None:
                raise ApplyError(f"refused: this host takes only bundles of a signed manifest "
                                 f"(it has {trust_file}); mesh.yml has no signing section")
            accepted = verify_manifest(module.params["manifest"], check_trust(trust), b)
            result["serial"] = accepted["serial"]
        elif module.params["manifest"] is not None:
            raise ApplyError("a manifest came but the host trusts no admins: pass trust")
        if b["uses_exit_node"]:
            result["ssh_client"] = refuse_exit_over_ssh(host.run, b, b["name"])
        if b["public_key"] and os.path.exists(host.key_file):
            have = public_key_of(host.key_file)
            if have != b["public_key"]:
                raise ApplyError(
                    f"{host.key_file} holds the key of public key {have}, but the bundle was "
                    f"compiled for {b['public_key']}: a host's key changes only by rotation "
                    "(playbooks/rotate.yml)")
        elif not os.path.exists(host.key_file) and not check_mode:
            raise ApplyError(f"{host.key_file} is missing: make it with wgmesh_key first")
        # A table nft refuses is refused before anything changes (a table the host runs
        # already passed).
        checked = before.get("hash") == b["hash"] and read(RULESET) == b["nftables"]
        if not checked and shutil.which("nft"):
            host.run("nft", "-c", "-f", "-", data=b["nftables"])
        elif not checked and not check_mode:
            raise ApplyError("nft is missing: install nftables (wgmesh_manage_packages)")
    except (ApplyError, BundleError) as exc:
        module.fail_json(msg=str(exc), changed=False, **result)

    try:
        actions = host.converge(b, check_mode)
        if not check_mode and (actions or before.get("hash") != b["hash"]):
            host.record(b)
        actions += host.sync_programs(b, check_mode)
    except (ApplyError, OSError) as exc:
        cause = str(exc)
        last = host.last_good()
        try:
            if last is not None and last.get("hash") != b["hash"]:
                Host(module).converge(last, check_mode=False, reload_table=True)
                back = f"returned to the last good bundle {last['hash']}"
            elif last is None:
                Host(module).leave(b["interface"], b["hop_interface"], check_mode=False,
                                   keep_key=True)
                back = "returned to its state before wgmesh (no bundle had applied before)"
            else:
                Host(module).converge(last, check_mode=False, reload_table=True)
                back = f"re-applied the bundle it ran, {last['hash']}"
        except (ApplyError, OSError) as again:
            back = f"and returning to the last good bundle failed too: {again}"
        module.fail_json(msg=f"applying bundle {b['hash']} failed: {cause}; {back}",
                         changed=True, **result)
    # The host was recorded as running this bundle: every difference found is drift.
    drift = actions if before.get("hash") == b["hash"] else []
    if accepted is not None and accepted != on_disk:
        actions.append(f"accept manifest serial {accepted['serial']}" + (
            "" if on_disk is None or (on_disk.get("admins"), on_disk.get("threshold")) ==
            (accepted["admins"], accepted["threshold"]) else
            f" and its admins ({', '.join(sorted(accepted['admins']))}, threshold "
            f"{accepted['threshold']})"))
        if not check_mode:
            os.makedirs(os.path.dirname(trust_file), mode=0o755, exist_ok=True)
            write_atomic(trust_file, json.dumps(accepted, sort_keys=True), 0o644)
    diff = {"before": "\n".join(host.diff_before), "after": "\n".join(host.diff_after)}
    if actions:  # what differs, in words, with the files' diff
        diff["prepared"] = "".join(f"{'drift' if drift else 'change'}: {a}\n" for a in actions)
    module.exit_json(changed=bool(actions), actions=actions, drift=drift, diff=diff,
                     peers=len(re.findall(r"^\[Peer\]", b["wg_conf"], re.M)),
                     seconds=round(time.monotonic() - started, 3), **result)


if __name__ == "__main__":
    main()
