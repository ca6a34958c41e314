"""Disjoint boxes for nftables interval sets.

A concatenated interval set (``saddr . l4proto . dport``) refuses overlapping elements, and
policies overlap all the time (a /16 on 80-443 and a /24 inside it on 22). ``disjoint`` turns
any list of boxes (one closed integer interval per dimension) into boxes that cover exactly
the same points, do not overlap, and are as few as a sweep per dimension makes them: adjacent
addresses with the same ports become one range, whatever rules they came from.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import chain

Box = tuple[tuple[int, int], ...]


# The rest of a box -> lists of ranges of its first dimension. The compiler hands over each
# rule's own address list for each of the rule's ports, so rests often share the same lists.
Grouped = dict[Box, list[Sequence[tuple[int, int]]]]


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """Non-overlapping boxes covering the union of ``boxes``, sorted."""
    grouped: Grouped = defaultdict(list)
    for b in boxes:
        grouped[b[1:]].append((b[0],))
    return disjoint_grouped(grouped)


def disjoint_grouped(grouped: Grouped) -> list[Box]:
    """``disjoint`` for boxes given grouped by everything after the first dimension: the
    shape the compiler builds them in (the same ports for many node addresses), without
    making every box."""
    # Rests fed the very same lists cover the same first-dimension ranges: one merge and
    # one bit for all of them.
    shared: dict[tuple[int, ...], tuple[list, list[Box]]] = {}  # list ids -> lists, rests
    for rest, lists in grouped.items():
        if lists:  # the lists live in ``grouped`` during this call, so their ids are theirs
            shared.setdefault(tuple(map(id, lists)), (lists, []))[1].append(rest)
    groups = list(shared.values())
    if not groups:
        return []
    if groups[0][1] == [()]:  # one dimension: only ranges to merge
        return [(r,) for r in merge_ranges(chain.from_iterable(groups[0][0]))]
    # Sweep the first dimension. Each group's merged ranges are disjoint and non-adjacent, so
    # it is either active or not: the active set is a bitmask toggled at each range's ends.
    # Between two boundaries the same rests are active; their own disjoint form is solved
    # once per distinct set, and equal neighbours are joined.
    toggles: dict[int, int] = defaultdict(int)
    for i, (lists, _) in enumerate(groups):
        bit = 1 << i
        for lo, hi in merge_ranges(chain.from_iterable(lists)):
            toggles[lo] ^= bit
            toggles[hi + 1] ^= bit
    solved: dict[int, tuple[Box, ...]] = {0: ()}
    out: list[Box] = []
    mask, run_start, run = 0, 0, ()
    append = out.append
    for p, toggle in sorted(toggles.items()):
        mask ^= toggle
        value = solved.get(mask)
        if value is None:
            value = solved[mask] = _solve(frozenset(
                rest for i in bits(mask) for rest in groups[i][1]))
        if value != run:
            seg = _point(run_start) if run_start == p - 1 else (run_start, p - 1)
            for r in run:
                append((seg, *r))
            run_start, run = p, value
    return out


@functools.lru_cache(maxsize=1 << 17)
def _point(value: int) -> tuple[int, int]:
    """One address as a range, shared: most elements of a large mesh's sets are single node
    addresses, and a range object each made them half of the compiler's memory."""
    return (value, value)


def bits(mask: int) -> list[int]:
    """Positions of the set bits, lowest first (a string search: linear in the mask's width
    for dense masks, where clearing bits one by one would copy the whole integer each time)."""
    digits = bin(mask)[:1:-1]  # lowest bit first
    out = []
    i = digits.find("1")
    while i >= 0:
        out.append(i)
        i = digits.find("1", i + 1)
    return out


@functools.lru_cache(maxsize=1 << 14)
def _solve(rests: frozenset) -> tuple[Box, ...]:
    """The remaining dimensions for one set of active boxes; the same port sets recur across
    address segments and hosts."""
    return tuple(disjoint(rests))


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of closed integer ranges, adjacent ones joined."""
    ordered = sorted(ranges)
    if not ordered:
        return []
    out = []
    lo, hi = ordered[0]
    for a, b in ordered:
        if a <= hi + 1:
            if b > hi:
                hi = b
        else:
            out.append((lo, hi))
            lo, hi = a, b
    out.append((lo, hi))
    return out


def contains(boxes: Sequence[Box], point: Sequence[int]) -> bool:
    """Whether any box contains the point (how nftables looks an element up)."""
    return any(all(lo <= v <= hi for (lo, hi), v in zip(b, point, strict=True)) for b in boxes)


# Address ranges -----------------------------------------------------------------------
# Addresses are integers and a list of (lo, hi) ranges stands for a set of them: what
# selectors, pools and routes resolve to.

V4_MAX, V6_MAX = 2**32 - 1, 2**128 - 1
FAMILIES = (4, 6)


def _r(a: str, b: str) -> tuple[int, int]:
    return int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))


# Tailscale's autogroup:internet: everything but private, CGNAT and link-local IPv4, and
# global unicast IPv6.
INTERNET = {
    4: [_r("0.0.0.0", "9.255.255.255"), _r("11.0.0.0", "100.63.255.255"),
        _r("100.128.0.0", "169.253.255.255"), _r("169.255.0.0", "172.15.255.255"),
        _r("172.32.0.0", "192.167.255.255"), _r("192.169.0.0", "255.255.255.255")],
    6: [_r("2000::", "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")],
}
EVERYTHING = {4: [(0, V4_MAX)], 6: [(0, V6_MAX)]}


def net_range(net) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def in_ranges(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def clip(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intersection of two range lists."""
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return merge_ranges(out)


def subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges of ``a`` not covered by ``b``."""
    out = []
    for lo, hi in a:
        for blo, bhi in merge_ranges(b):
            if bhi < lo or blo > hi:
                continue
            if blo > lo:
                out.append((lo, blo - 1))
            lo = bhi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out
