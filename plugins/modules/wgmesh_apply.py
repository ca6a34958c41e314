#!/usr/bin/python
"""Host-side: bring a wg-quick interface up and keep the running interface equal to its file."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wgmesh_wireguard
short_description: Bring a WireGuard interface up and apply config changes live
description:
  - Brings the interface up from its wg-quick file if it is down, through
    C(wg-quick@<interface>) where systemd runs, else with C(wg-quick up) directly.
  - When it is up, compares the running interface (C(wg show dump), addresses, MTU, routes)
    with the file and applies only the difference, live, with C(wg syncconf); the tunnel is
    never taken down, so traffic between unchanged peers keeps flowing.
  - The file holds no private key; the config given to C(wg syncconf) is built on the host
    with the host's own key (syncing a keyless config would clear the interface's key), in a
    0600 temporary file that is removed at once. The key never appears in the result.
options:
  interface:
    description: Interface name; the file is C(/etc/wireguard/<interface>.conf).
    type: str
    default: wg0
  service:
    description: How to bring the interface up; C(auto) uses systemd when it runs.
    type: str
    choices: [auto, systemd, wg-quick]
    default: auto
  key_file:
    description: The host's private key file (see wgmesh_key).
    type: path
    required: true
  management_networks:
    description:
      - Networks that stay on the main routing table (the host's own default gateway) while
        a peer takes the default route as exit node, such as the Ansible controller's.
      - Kept as C(ip rule) entries at priority 1000 only while the interface routes the
        default route; the wg-quick file carries the same rules for the next C(up).
    type: list
    elements: str
    default: []
  state:
    description:
      - C(present) brings the interface up and in sync.
      - C(absent) takes it down, then removes its file (an interface the host no longer
        needs, such as a hop tunnel).
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the running peers (public keys and allowed IPs) before and after.
author: wgmesh
"""

EXAMPLES = r"""
- name: Bring wg0 up and sync it with its file
  wgmesh_wireguard:
    interface: wg0
    key_file: /etc/wireguard/wg0.key
"""

RETURN = r"""
actions:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: list
  elements: str
  sample: ["syncconf: +1 peer, -0 peers, 2 changed"]
peers:
  description: Number of peers on the interface after the change.
  returned: always
  type: int
"""

import ipaddress
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

# The same number as wgmesh.render.MANAGEMENT_RULE_PRIORITY: before wg-quick's rules.
MANAGEMENT_RULE_PRIORITY = 1000


class Runner:
    """The one place that runs wg, wg-quick, ip, nft and systemctl."""

    def __init__(self, module: AnsibleModule):
        self.module = module

    def __call__(self, *argv: str, check: bool = True, data: str | None = None) -> str:
        rc, out, err = self.module.run_command(list(argv), data=data, binary_data=True)
        if check and rc != 0:
            self.module.fail_json(msg=f"{' '.join(argv)} failed ({rc}): {redact(err.strip())}")
        return out if rc == 0 else ""

    def rc(self, *argv: str) -> int:
        return self.module.run_command(list(argv))[0]


# Anything shaped like a WireGuard key (private or public): wg and wg-quick may echo the line
# of a configuration they refuse, and that line can hold the private key.
KEY_TEXT = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


def redact(text: str) -> str:
    """Command output safe to report: every key-shaped string replaced."""
    return KEY_TEXT.sub("(key redacted)", text)


def parse_conf(text: str) -> dict:
    """[Interface] and [Peer] sections of a wg(8)/wg-quick file, keys lower-cased."""
    conf = {"interface": {}, "peers": []}
    section = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower() == "[interface]":
            section = conf["interface"]
        elif line.lower() == "[peer]":
            section = {}
            conf["peers"].append(section)
        elif "=" in line and section is not None:
            key, value = (x.strip() for x in line.split("=", 1))
            section.setdefault(key.lower(), []).append(value)
    return conf


def desired_peers(conf: dict) -> dict[str, dict]:
    out = {}
    for p in conf["peers"]:
        key = p["publickey"][0]
        allowed = {str(ipaddress.ip_network(a.strip(), strict=False))
                   for v in p.get("allowedips", []) for a in v.split(",") if a.strip()}
        out[key] = {"allowed": allowed,
                    "keepalive": int(p.get("persistentkeepalive", ["0"])[0] or 0),
                    "endpoint": p.get("endpoint", [None])[0]}
    return out


def running_peers(dump: str) -> tuple[int, dict[str, dict]]:
    lines = dump.splitlines()
    port = int(lines[0].split("\t")[2]) if lines else 0
    out = {}
    for line in lines[1:]:
        f = line.split("\t")
        allowed = set() if f[3] == "(none)" else {
            str(ipaddress.ip_network(a, strict=False)) for a in f[3].split(",")}
        out[f[0]] = {"allowed": allowed, "keepalive": 0 if f[7] == "off" else int(f[7]),
                     "endpoint": None if f[2] == "(none)" else f[2]}
    return port, out


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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "interface": {"type": "str", "default": "wg0"},
            "service": {"type": "str", "default": "auto",
                        "choices": ["auto", "systemd", "wg-quick"]},
            "key_file": {"type": "path", "required": True, "no_log": False},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "management_networks": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    run = Runner(module)
    iface = module.params["interface"]
    if not re.fullmatch(r"[a-zA-Z0-9_.=+-]{1,15}", iface):
        module.fail_json(msg=f"invalid interface name {iface!r}")
    try:
        keep = [str(ipaddress.ip_network(n)) for n in module.params["management_networks"]]
    except ValueError as exc:
        module.fail_json(msg=f"management_networks: {exc}")
    conf_path = f"/etc/wireguard/{iface}.conf"
    service = module.params["service"]
    if service == "auto":
        service = "systemd" if os.path.isdir("/run/systemd/system") else "wg-quick"
    actions: list[str] = []

    up = run.rc("ip", "link", "show", "dev", iface) == 0
    if module.params["state"] == "absent":
        if up:
            actions.append(f"take {iface} down")
            if not module.check_mode:
                if service == "systemd":
                    run("systemctl", "disable", "--now", f"wg-quick@{iface}")
                else:
                    run("wg-quick", "down", iface)  # reads the file: remove it only after
        if os.path.exists(conf_path):
            actions.append(f"remove {conf_path}")
            if not module.check_mode:
                os.unlink(conf_path)
        module.exit_json(changed=bool(actions), actions=actions, peers=0)
    if not up:
        actions.append(f"bring {iface} up ({service})")
        if not module.check_mode:
            if service == "systemd":
                run("systemctl", "enable", "--now", f"wg-quick@{iface}")
            else:
                run("wg-quick", "up", iface)
        peers = 0
        if os.path.exists(conf_path):  # in check mode the file may not be written yet
            with open(conf_path) as fh:
                peers = len(parse_conf(fh.read())["peers"])
        module.exit_json(changed=True, actions=actions, peers=peers)
    if service == "systemd" and run.rc("systemctl", "is-enabled", "--quiet",
                                       f"wg-quick@{iface}") != 0:
        actions.append(f"enable wg-quick@{iface}")
        if not module.check_mode:
            run("systemctl", "enable", f"wg-quick@{iface}")

    with open(conf_path) as fh:
        conf = parse_conf(fh.read())
    want = desired_peers(conf)
    port, have = running_peers(run("wg", "show", iface, "dump"))
    want_port = int(conf["interface"].get("listenport", ["0"])[0])
    added = sorted(set(want) - set(have))
    removed = sorted(set(have) - set(want))
    updated = sorted(k for k in set(want) & set(have)
                     if want[k]["allowed"] != have[k]["allowed"]
                     or want[k]["keepalive"] != have[k]["keepalive"]
                     or endpoint_differs(want[k]["endpoint"], have[k]["endpoint"]))
    if added or removed or updated or (want_port and want_port != port):
        actions.append(f"syncconf: +{len(added)} peers, -{len(removed)} peers, "
                       f"{len(updated)} changed")
        if not module.check_mode:
            stripped = run("wg-quick", "strip", iface)
            with open(module.params["key_file"]) as fh:
                key_line = f"PrivateKey = {fh.read().strip()}"
            # syncconf sets everything the config names and clears the rest: keep the
            # firewall mark that exit-node routing relies on (it is not in the file).
            fwmark = run("wg", "show", iface, "fwmark").strip()
            if fwmark not in ("", "off"):
                key_line += f"\nFwMark = {fwmark}"
            merged = re.sub(r"(?im)^\[Interface\]\s*$", "[Interface]\n" + key_line,
                            stripped, count=1)
            fd, tmp = tempfile.mkstemp(prefix=f".{iface}-sync.", dir="/run")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(merged)
                del merged, key_line
                run("wg", "syncconf", iface, tmp)
            finally:
                os.unlink(tmp)

    # Addresses, MTU and routes for allowed IPs outside the interface's own prefixes.
    want_addrs = {str(ipaddress.ip_interface(a.strip())) for v in
                  conf["interface"].get("address", []) for a in v.split(",") if a.strip()}
    have_addrs = set(re.findall(r"inet6? (\S+) .*scope global",
                                run("ip", "-o", "address", "show", "dev", iface)))
    actions += reconcile("address", want_addrs, have_addrs, iface, run, module.check_mode)
    mtu = conf["interface"].get("mtu", [None])[0]
    link = run("ip", "-o", "link", "show", "dev", iface)
    if mtu and f" mtu {mtu} " not in link:
        actions.append(f"set mtu {mtu}")
        if not module.check_mode:
            run("ip", "link", "set", "dev", iface, "mtu", mtu)
    nets = [ipaddress.ip_interface(a).network for a in want_addrs]
    routed = {str(n) for p in want.values() for n in map(ipaddress.ip_network, p["allowed"])
              if n.prefixlen and not any(n.version == o.version and n.subnet_of(o)
                                         for o in nets)}
    have_routes = set()
    for family in ("-4", "-6"):
        for line in run("ip", family, "route", "show", "dev", iface, "proto", "boot").splitlines():
            have_routes.add(str(ipaddress.ip_network(line.split()[0], strict=False)))
    actions += reconcile("route", routed, have_routes, iface, run, module.check_mode)

    # Management rules first: they must be in place before the default route moves.
    exits = any(d in p["allowed"] for p in want.values() for d in ("0.0.0.0/0", "::/0"))
    actions += management_rules(run, keep, exits, module.check_mode)
    actions += exit_routing(run, iface, want, module.check_mode)

    diff = {"before": "".join(f"{k} {' '.join(sorted(v['allowed']))}\n"
                              for k, v in sorted(have.items())),
            "after": "".join(f"{k} {' '.join(sorted(v['allowed']))}\n"
                             for k, v in sorted(want.items()))}
    module.exit_json(changed=bool(actions), actions=actions, peers=len(want), diff=diff)


if __name__ == "__main__":
    main()
