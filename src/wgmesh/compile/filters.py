"""Per-host filter sets: the elements of the nftables sets a host's table looks packets up in.

Each rule is resolved once (``RuleData``: node masks and address ranges per family, its
ports and protocols); a host's sets are then the union of the rules that name it, made
disjoint (nftables interval sets refuse overlapping elements). Hosts with the same role see
the same rules the same way and share one computation (``FilterSets.direction``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from wgmesh.compile.resolve import RuleData
from wgmesh.intervals import FAMILIES, Box, Grouped, clip, disjoint, disjoint_grouped

if TYPE_CHECKING:
    from wgmesh.compile.resolve import Resolution


def add_rule(boxes: dict[str, Grouped], name: str, head: Box, addresses, rd: RuleData) -> None:
    """Add what ``rd`` allows for ``addresses`` (the sets' first dimension) to the three sets
    ``ping_<name>``, ``<name>`` (ports) and ``<name>p`` (other protocols), grouped by what
    follows the addresses (``head``, then the ports or protocol): one rule's address list
    serves all of its ports."""
    if not addresses:
        return
    boxes[f"ping_{name}"][head].append(addresses)
    ports = boxes[name]
    for pp in rd.port_boxes:
        ports[(*head, *pp)].append(addresses)
    protos = boxes[f"{name}p"]
    for p in rd.other_protos:
        protos[(*head, (p, p))].append(addresses)


def forward(boxes: dict[str, Grouped], rd: RuleData, f: int, srcs, dsts) -> None:
    """Elements of the ``fwd`` sets (source, destination) of a router or exit node."""
    for d in dsts:
        add_rule(boxes, f"fwd{f}", (d,), srcs, rd)


def restrict_port(boxes: tuple[Box, ...], proto: int, port: int,
                  allowed: list[tuple[int, int]], dim: int = 0) -> tuple[Box, ...]:
    """Boxes (addresses..., protocol, port) in which ``proto``/``port`` keeps only the
    address ranges of dimension ``dim`` that lie in ``allowed``; every other protocol and
    port is left as it was."""
    out: list[Box] = []
    for box in boxes:
        *addrs, protos, ports = box
        if not (protos[0] <= proto <= protos[1] and ports[0] <= port <= ports[1]):
            out.append(box)
            continue
        if protos[0] < proto:
            out.append((*addrs, (protos[0], proto - 1), ports))
        if proto < protos[1]:
            out.append((*addrs, (proto + 1, protos[1]), ports))
        if ports[0] < port:
            out.append((*addrs, (proto, proto), (ports[0], port - 1)))
        if port < ports[1]:
            out.append((*addrs, (proto, proto), (port + 1, ports[1])))
        for r in clip([addrs[dim]], allowed):
            out.append((*addrs[:dim], r, *addrs[dim + 1:], (proto, proto), (port, port)))
    return tuple(disjoint(out))


def new_boxes() -> dict[str, Grouped]:
    return defaultdict(lambda: defaultdict(list))


def disjoint_sets(boxes: dict[str, Grouped]) -> dict[str, tuple[Box, ...]]:
    return {k: out for k, v in boxes.items() if (out := tuple(disjoint_grouped(v)))}


class FilterSets:
    """A host's inbound and outbound sets, computed once per distinct signature: the rules
    that name the host as destination (``in``) or source (``out``), with the address
    families, or for autogroup:self the nodes, they name it for."""

    def __init__(self, res: Resolution):
        self.res = res
        self._cache: dict[str, dict[tuple, dict[str, tuple[Box, ...]]]] = {}

    def direction(self, direction: str, signature: tuple) -> dict[str, tuple[Box, ...]]:
        cache = self._cache.setdefault(direction, {})
        if signature in cache:
            return cache[signature]
        boxes = new_boxes()
        for k, *how in signature:
            rd = self.res.rules[k]
            if how[0] == "self":
                v4, v6 = self.res.node_ranges(how[1])
                ranges, families = {4: v4, 6: v6}, FAMILIES
            else:
                ranges = rd.src_ranges if direction == "in" else rd.dst_ranges
                families = how[0]
            for f in families:
                add_rule(boxes, f"{direction}{f}", (), ranges[f], rd)
        cache[signature] = disjoint_sets(boxes)
        return cache[signature]
