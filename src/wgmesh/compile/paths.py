"""How two nodes reach each other: over their site's LAN, directly to an endpoint, through a
relay's hop tunnel (docs/relay.md), or not at all; and the hop tunnel each node runs."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from wgmesh.compile.hostoutput import Hop, HopPeer, Peer
from wgmesh.compile.resolve import Resolution
from wgmesh.grammar import endpoint as parse_endpoint
from wgmesh.mesh import Node


def endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Paths:
    """The paths of one mesh (its relays, hop addresses), over its ``Resolution``."""

    def __init__(self, res: Resolution):
        self.res = res
        self.relays = [n for n in res.nodes if n.relay]

    def hop_address(self, name: str) -> ipaddress.IPv6Address:
        """A node's address inside hop tunnels: the relay pool plus its mesh IPv6 host part."""
        pool = self.res.net.relay_pool
        return pool.network_address + (int(self.res.alloc[name].ipv6) & (pool.num_addresses - 1))

    def check_hop_addresses(self) -> None:
        """Hop addresses are derived from mesh IPv6 addresses; two nodes must not share one,
        or the relay could not tell them apart (recorded as the mesh's problems)."""
        seen: dict[ipaddress.IPv6Address, str] = {}
        for name in self.res.names:
            addr = self.hop_address(name)
            if addr in seen:
                pinned = "address6" if self.res.mesh.nodes[name].address6 else None
                self.res.mesh_error(name, pinned,
                                    f"its relay address {addr} is also node {seen[addr]}'s",
                                    f"pin IPv6 addresses that differ in their last "
                                    f"{128 - self.res.net.relay_pool.prefixlen} bits")
            seen[addr] = name

    def connection(self, me: Node, other: Node) -> tuple[str, str | None, str | None]:
        """How ``me`` reaches ``other`` (lan, direct, relay or none), the endpoint it uses
        for it, and the relay that carries the pair."""
        if me.site and me.site == other.site and other.lan_address and me.lan_address:
            port = other.listen_port or self.res.net.listen_port
            return "lan", endpoint_text(str(other.lan_address), port), None
        if other.endpoint:
            return "direct", other.endpoint, None
        if me.endpoint:
            return "direct", None, None  # the other side dials in and keeps the path open
        relays = [n for n in self.relays if n.name not in (me.name, other.name)]
        # A relayed pair runs the hop tunnel at both ends: a WireGuard app cannot.
        if relays and me.managed and other.managed:
            pair_sites = {me.site, other.site} - {None}
            relays.sort(key=lambda n: (n.site not in pair_sites, n.name))
            # The end-to-end session runs to the peer's hop address, inside the hop tunnel.
            port = other.listen_port or self.res.net.listen_port
            return "relay", endpoint_text(str(self.hop_address(other.name)), port), relays[0].name
        return "none", None, None

    def hop(self, name: str, relayed: list[Peer], clients: set[tuple[str, str]]) -> Hop:
        """Node ``name``'s hop interface: on a relay, every node of the pairs it carries
        (``clients``) is a peer; elsewhere, the relays of its ``relayed`` peers are."""
        res, net = self.res, self.res.net
        address = f"{self.hop_address(name)}/{net.relay_pool.prefixlen}"
        if clients:
            members = sorted({n for pair in clients for n in pair})
            peers = [HopPeer(n, res.alloc[n].public_key, [f"{self.hop_address(n)}/128"], None,
                             None) for n in members]
            pairs = []
            for a, b in sorted(clients):
                for src, dst in ((a, b), (b, a)):
                    port = res.mesh.nodes[dst].listen_port or net.listen_port
                    pairs.append((str(self.hop_address(src)), str(self.hop_address(dst)), port))
            return Hop(net.hop_interface, address, net.relay_port, peers, pairs)
        by_relay: dict[str, list[str]] = defaultdict(list)
        for p in relayed:
            by_relay[p.relay].append(f"{self.hop_address(p.name)}/128")
        peers = []
        for relay, allowed in sorted(by_relay.items()):
            host = parse_endpoint(res.mesh.nodes[relay].endpoint)[0]
            peers.append(HopPeer(relay, res.alloc[relay].public_key,
                                 [f"{self.hop_address(relay)}/128", *sorted(allowed)],
                                 endpoint_text(host, net.relay_port), net.keepalive or 25))
        return Hop(net.hop_interface, address, None, peers)
