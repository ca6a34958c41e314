"""wg-quick files: the mesh interface's and the relay tunnel's, with the hooks that load the
filter first and bring split DNS and the resolver back with the interface."""

from __future__ import annotations

import functools

from ansible_collections.wgmesh.mesh.plugins.module_utils.wgmesh_contract import (
    DNSMASQ_CONF,
    DNSMASQ_PID,
    MANAGEMENT_RULE_PRIORITY,
    RESOLVER_CONF,
    RESOLVER_PID,
    RULESET_PATH,
)
from wgmesh.compile.hostoutput import HostOutput, Peer
from wgmesh.mesh import Network
from wgmesh.render.common import clean, clean_key
from wgmesh.render.names import split_dns

# The first thing every wgmesh interface's wg-quick file does, on every path that brings it
# up (wg-quick@ at boot, `wg-quick up`, wgmesh_apply): load the host's table. wg-quick runs
# PreUp before it creates the interface and stops at a hook that fails, so a table that is
# missing, unreadable or refused by nft leaves the interface down, with the reason on
# stderr (the journal under systemd). Fixed text: no value from any input.
FILTER_HOOK = (f"PreUp = nft -f {RULESET_PATH} || {{ echo \"wgmesh: %i stays down: its "
               f"filter {RULESET_PATH} did not load\" >&2; exit 1; }}")


# After the key (wg-quick sets the peers before PostUp loads it, so the keepalives they
# trigger go out with no key): a peer with a keepalive gets one now, so a host behind NAT
# opens its tunnels at boot instead of when it next has a packet to send. Fixed text too.
HANDSHAKE_HOOK = ('PostUp = wg show %i persistent-keepalive | while read -r peer every; do '
                  '[ "$every" = off ] || { wg set %i peer "$peer" persistent-keepalive 0; '
                  'wg set %i peer "$peer" persistent-keepalive "$every"; }; done')


# Split DNS comes back with the interface, at boot too (resolved forgets a link's DNS when
# the link goes; the dnsmasq wgmesh_apply starts is a process, not a service): per-link DNS
# where systemd-resolved runs, else that dnsmasq, from the configuration the module wrote,
# unless it runs. Never stops the interface coming up.


def split_dns_hook(dns: dict[str, list[str]]) -> str:
    servers = " ".join(sorted({s for v in dns.values() for s in v}))
    domains = " ".join(f"~{d}" for d in sorted(dns))
    return ("PostUp = if [ -d /run/systemd/resolve ] && command -v resolvectl >/dev/null; "
            f"then resolvectl dns %i {servers} && resolvectl domain %i {domains}; "
            f"elif [ -e {DNSMASQ_CONF} ] && ! pgrep -x -F {DNSMASQ_PID} dnsmasq >/dev/null; "
            f"then dnsmasq --conf-file={DNSMASQ_CONF}; fi || true")


# The mesh resolver (docs/routing.md, Names): a dnsmasq of its own on the node's mesh
# addresses, started again with the interface (at boot too) when it does not run.
RESOLVER_HOOK = (f"PostUp = if [ -e {RESOLVER_CONF} ] && ! pgrep -x -F {RESOLVER_PID} dnsmasq "
                 f">/dev/null; then dnsmasq --conf-file={RESOLVER_CONF}; fi || true")


def wg_quick(host: HostOutput, net: Network) -> str:
    """wg-quick configuration with no PrivateKey: the host loads its own key file."""
    clean(host.name, net.interface, str(host.ipv4), str(host.ipv6))
    lines = [
        f"# wgmesh: {net.interface} on {host.name}. Generated; holds no secret.",
        "[Interface]",
        # The pools' prefixes: one connected route covers every peer's mesh address, so a
        # peer added live by wg syncconf needs no route of its own.
        f"Address = {host.ipv4}/{net.ipv4_pool.prefixlen}, {host.ipv6}/{net.ipv6_pool.prefixlen}",
        f"ListenPort = {host.listen_port}",
        f"MTU = {host.mtu}",
        FILTER_HOOK,
        f"PostUp = wg set %i private-key /etc/wireguard/{net.interface}.key",
        HANDSHAKE_HOOK,
    ]
    dns = split_dns(host)
    if dns:
        lines.append(split_dns_hook(dns))
    if host.resolver:
        lines.append(RESOLVER_HOOK)
    if host.uses_exit_node:
        lines += management_rules(net)
    for peer in host.peers:
        lines.append(peer_block(peer))
    return "\n".join(lines) + "\n"


def management_rules(net: Network) -> list[str]:
    """Hooks that keep the management networks on the main table (their own default
    gateway) while the exit node takes the default route; wg-quick runs them at every up,
    and wgmesh_apply applies the same rules live."""
    lines = []
    for n in net.management_networks:
        clean(str(n))
        rule = f"ip -{n.version} rule %s to {n} lookup main priority {MANAGEMENT_RULE_PRIORITY}"
        # A rule left over from a crash would make "add" fail and the interface not come up.
        lines.append(f"PostUp = {rule % 'del'} 2>/dev/null || true; {rule % 'add'}")
        lines.append(f"PreDown = {rule % 'del'} || true")
    return lines


@functools.lru_cache(maxsize=1 << 16)
def peer_block(peer: Peer) -> str:
    """One [Peer] section; hosts that see a peer alike share its object, so it is made once."""
    clean(peer.name, peer.connection, *peer.roles, *peer.allowed_ips)
    if peer.relay:
        clean(peer.relay)
    if peer.endpoint:
        clean(peer.endpoint)
    if peer.public_key:
        clean_key(peer.public_key)
    how = peer.connection + (f" via {peer.relay}" if peer.relay else "")
    role_text = f", {'/'.join(peer.roles)}" if peer.roles else ""
    if not peer.public_key:
        return (f"\n# {peer.name} ({how}{role_text}): public key not known yet; the next "
                "site.yml run collects it")
    lines = ["", "[Peer]", f"# {peer.name} ({how}{role_text})", f"PublicKey = {peer.public_key}",
             f"AllowedIPs = {', '.join(peer.allowed_ips)}"]
    if peer.endpoint:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.keepalive:
        lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return "\n".join(lines)


def hop_conf(host: HostOutput, net: Network) -> str | None:
    """wg-quick file of the hop interface (relays and the nodes they carry), no secret."""
    hop = host.hop
    if hop is None:
        return None
    clean(host.name, hop.interface, hop.address, net.interface)
    lines = [f"# wgmesh: {hop.interface} on {host.name}, the hop tunnel to or of a relay. "
             "Holds no secret.", "[Interface]", f"Address = {hop.address}"]
    if hop.listen_port:
        lines.append(f"ListenPort = {hop.listen_port}")
    lines.append(FILTER_HOOK)
    # The same key as the mesh interface: the relay knows this node by its pinned key.
    lines += [f"PostUp = wg set %i private-key /etc/wireguard/{net.interface}.key",
              HANDSHAKE_HOOK]
    for p in hop.peers:
        clean(p.name, *p.allowed_ips, *([p.endpoint] if p.endpoint else []))
        if not p.public_key:
            lines += ["", f"# {p.name}: public key not known yet"]
            continue
        clean_key(p.public_key)
        lines += ["", "[Peer]", f"# {p.name}", f"PublicKey = {p.public_key}",
                  f"AllowedIPs = {', '.join(p.allowed_ips)}"]
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.keepalive:
            lines.append(f"PersistentKeepalive = {p.keepalive}")
    return "\n".join(lines) + "\n"
