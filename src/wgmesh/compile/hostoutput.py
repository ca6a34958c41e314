"""What the compiler makes of one host: its peers and the paths to them, filter sets, names,
NAT traversal and resolver parts. The renderers read only these types."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from wgmesh.intervals import Box
from wgmesh.mesh import Node


# Shared between hosts that see the peer alike: never mutate. Identity is its equality, so a
# renderer can cache one text per object.
@dataclass(frozen=True, eq=False)
class Peer:
    name: str
    public_key: str | None
    allowed_ips: list[str]
    endpoint: str | None
    keepalive: int | None
    connection: str  # direct | lan | relay | none
    relay: str | None = None
    roles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HopPeer:
    name: str
    public_key: str | None
    allowed_ips: list[str]
    endpoint: str | None
    keepalive: int | None


@dataclass
class Hop:
    """The hop interface that carries end-to-end WireGuard sessions through a relay. On a
    relay, ``pairs`` are the (source hop, destination hop, UDP port) it may forward."""

    interface: str
    address: str
    listen_port: int | None
    peers: list[HopPeer]
    pairs: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass
class Agent:
    """NAT traversal on one host (docs/relay.md): the host's agent asks ``lighthouses`` what
    they see, and may move its relayed ``punch`` peers to a direct path; a lighthouse answers
    its ``clients`` (mesh IPv4 -> name, key, the keys of the peers it may learn about)."""

    port: int
    address: str
    lighthouses: list[tuple[str, str, str]]  # name, mesh IPv4, public key
    punch: list[tuple[str, str, str, str, str]]  # name, key, mesh IPv4, relay endpoint, relay
    clients: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)

    @property
    def counterparts(self) -> list[str]:
        """Mesh IPv4 addresses the agent port talks with, both ways."""
        return sorted({*(a for _, a, _ in self.lighthouses), *(p[2] for p in self.punch),
                       *self.clients}, key=lambda a: ipaddress.IPv4Address(a))


@dataclass
class Resolver:
    """The mesh resolver on one node (docs/routing.md, Names): it listens on the node's mesh
    ``addresses`` and answers ``records`` (name, fqdn, IPv4, IPv6) for every node, the split
    domains the node itself may reach from their nameservers, other names from its own."""

    addresses: tuple[str, str]
    domain: str
    records: list[tuple[str, str, str, str]]
    split: dict[str, list[str]]


@dataclass
class HostOutput:
    name: str
    node: Node
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    listen_port: int
    peers: list[Peer]
    sets: dict[str, tuple[Box, ...]]  # set name -> disjoint elements
    routes: list[str]
    exit_node: bool
    forwarding: bool
    names: list[tuple[str, tuple[str, str]]]  # address, (name, fqdn)
    mtu: int = 1420
    hop: Hop | None = None
    snat: bool = False  # masquerade what leaves the mesh (exit nodes; routers by default)
    uses_exit_node: str | None = None  # the exit node this host sends its internet traffic to
    unreachable: tuple[str, ...] = ()  # nodes policy relates it to that it can never reach
    # SSH-managed: who may log in over the mesh, as (node, IPv4, IPv6, logins, any non-root)
    ssh: list[tuple[str, str, str, tuple[str, ...], bool]] | None = None
    dns: dict[str, list[str]] | None = None  # split domain -> nameservers it may reach
    agent: Agent | None = None
    resolver: Resolver | None = None
    # A device's DNS servers: the mesh resolvers it reaches on UDP 53 (its only resolvers).
    dns_servers: tuple[str, ...] = ()


