"""Disjoint boxes for nftables interval sets.

A concatenated interval set (``saddr . l4proto . dport``) refuses overlapping elements, and
policies overlap all the time (a /16 on 80-443 and a /24 inside it on 22). ``disjoint`` turns
any list of boxes (one closed integer interval per dimension) into boxes that cover exactly
the same points, do not overlap, and are as few as a sweep per dimension makes them: adjacent
addresses with the same ports become one range, whatever rules they came from.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence

Box = tuple[tuple[int, int], ...]


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """Non-overlapping boxes covering the union of ``boxes``, sorted."""
    boxes = set(boxes)
    if not boxes:
        return []
    if len(next(iter(boxes))) == 1:
        return [(r,) for r in merge_ranges(b[0] for b in boxes)]
    # Boxes that differ only in the first dimension merge there first (the same ports for
    # neighbouring node addresses from several rules): far fewer boundaries to sweep.
    by_rest: dict[Box, list[tuple[int, int]]] = defaultdict(list)
    for b in boxes:
        by_rest[b[1:]].append(b[0])
    # Sweep the first dimension. Each rest now has disjoint, non-adjacent ranges, so it is
    # either active or not: the active set is a bitmask toggled at each range's ends.
    # Between two boundaries the same rests are active; their own disjoint form is solved
    # once per distinct set, and equal neighbours are joined.
    rests = list(by_rest)
    toggles: dict[int, int] = defaultdict(int)
    for i, rest in enumerate(rests):
        bit = 1 << i
        for lo, hi in merge_ranges(by_rest[rest]):
            toggles[lo] ^= bit
            toggles[hi + 1] ^= bit
    solved: dict[int, tuple[Box, ...]] = {0: ()}
    out: list[Box] = []
    mask, run_start, run = 0, 0, ()
    for p in sorted(toggles):
        mask ^= toggles[p]
        value = solved.get(mask)
        if value is None:
            value = solved[mask] = _solve(frozenset(rests[i] for i in _bits(mask)))
        if value != run:
            seg = (run_start, p - 1)
            out += [(seg, *r) for r in run]
            run_start, run = p, value
    return out


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


@functools.lru_cache(maxsize=1 << 14)
def _solve(rests: frozenset) -> tuple[Box, ...]:
    """The remaining dimensions for one set of active boxes; the same port sets recur across
    address segments and hosts."""
    return tuple(disjoint(rests))


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of closed integer ranges, adjacent ones joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def contains(boxes: Sequence[Box], point: Sequence[int]) -> bool:
    """Whether any box contains the point (how nftables looks an element up)."""
    return any(all(lo <= v <= hi for (lo, hi), v in zip(b, point, strict=True)) for b in boxes)
