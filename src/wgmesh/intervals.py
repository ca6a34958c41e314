"""Disjoint boxes for nftables interval sets.

A concatenated interval set (``saddr . l4proto . dport``) refuses overlapping elements, and
policies overlap all the time (a /16 on 80-443 and a /24 inside it on 22). ``disjoint`` turns
any list of boxes (one closed integer interval per dimension) into boxes that cover exactly
the same points, do not overlap, and are as few as a sweep per dimension makes them: adjacent
addresses with the same ports become one range, whatever rules they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Box = tuple[tuple[int, int], ...]


def disjoint(boxes: Iterable[Box]) -> list[Box]:
    """Non-overlapping boxes covering the union of ``boxes``, sorted."""
    boxes = list(set(boxes))
    if not boxes:
        return []
    if len(boxes[0]) == 1:
        return [(r,) for r in merge_ranges(b[0] for b in boxes)]
    # Sweep the first dimension; between two boundaries the same boxes are active, so the
    # rest of the dimensions are solved once per stretch and equal neighbours are joined.
    events: dict[int, list[Box]] = {}
    for b in boxes:
        events.setdefault(b[0][0], [])
        events.setdefault(b[0][1] + 1, [])
    for b in boxes:
        events[b[0][0]].append(b)
    points = sorted(events)
    active: set[Box] = set()
    ends: dict[int, list[Box]] = {}
    for b in boxes:
        ends.setdefault(b[0][1] + 1, []).append(b)
    out: list[Box] = []
    run_start = None
    run_rest: list[Box] | None = None
    for i, p in enumerate(points):
        for b in ends.get(p, ()):
            active.discard(b)
        active.update(events[p])
        rest = disjoint(b[1:] for b in active) if active else None
        if rest != run_rest:
            if run_rest:
                out.extend(((run_start, p - 1), *r) for r in run_rest)
            run_start, run_rest = p, rest
        if i == len(points) - 1 and run_rest:
            raise AssertionError("a box extends past its last boundary")
    return sorted(out)


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
