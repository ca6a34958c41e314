"""wgmesh.intervals: the disjoint boxes of nftables interval sets and the address-range
algebra, checked point by point against plain sets of integers on a small universe."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.intervals import (
    clip,
    contains,
    disjoint,
    disjoint_grouped,
    merge_ranges,
    subtract,
)

SMALL = 24  # every coordinate is in 0..SMALL-1, so every point can be checked


ONE_RANGE = st.tuples(st.integers(0, SMALL - 1), st.integers(0, SMALL - 1)).map(
    lambda p: (min(p), max(p)))


def ranges(max_size: int = 6):
    return st.lists(ONE_RANGE, max_size=max_size)


def points_of(rs) -> set[int]:
    return {v for lo, hi in rs for v in range(lo, hi + 1)}


def boxes(dims: int):
    return st.lists(st.tuples(*[ONE_RANGE] * dims), max_size=6)


@settings(max_examples=300, deadline=None)
@given(ranges(10))
def test_merge_ranges_is_the_union_with_neighbours_joined(rs):
    merged = merge_ranges(rs)
    assert points_of(merged) == points_of(rs)
    for (_, hi), (lo, _) in itertools.pairwise(merged):
        assert lo > hi + 1  # sorted, disjoint and not adjacent


@settings(max_examples=300, deadline=None)
@given(ranges(), ranges())
def test_clip_and_subtract_are_intersection_and_difference(a, b):
    assert points_of(clip(a, b)) == points_of(a) & points_of(b)
    left = subtract(merge_ranges(a), b)
    assert points_of(left) == points_of(a) - points_of(b)
    assert all(lo <= hi for lo, hi in left)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3).flatmap(boxes))
def test_disjoint_covers_the_same_points_without_overlap(given_boxes):
    out = disjoint(given_boxes)
    dims = len(given_boxes[0]) if given_boxes else 1
    universe = itertools.product(range(SMALL), repeat=dims) if dims < 3 else (
        # three dimensions: the boxes' corners and their neighbours, where errors show
        itertools.product(*[sorted({v + d for b in given_boxes for lo, hi in (b[k],)
                                    for v in (lo, hi) for d in (-1, 0, 1)})
                            for k in range(dims)]))
    for point in universe:
        inside = [b for b in out if contains([b], point)]
        assert len(inside) <= 1, (point, inside)  # nftables refuses overlapping elements
        assert bool(inside) == contains(given_boxes, point), point
    assert out == sorted(out)


def test_disjoint_joins_neighbouring_addresses_with_the_same_ports():
    # 10-11 and 12-13 on port 80, 12 also on 22: one range on 80 (the sweep joins them),
    # 12 alone on 22.
    out = disjoint([((10, 11), (80, 80)), ((12, 13), (80, 80)), ((12, 12), (22, 22))])
    assert out == [((10, 11), (80, 80)), ((12, 12), (22, 22)), ((12, 12), (80, 80)),
                   ((13, 13), (80, 80))]
    assert disjoint([((1, 5),), ((6, 9),), ((20, 20),)]) == [((1, 9),), ((20, 20),)]


def test_the_grouped_form_gives_what_the_boxes_give():
    shared = [(1, 4), (9, 9)]
    grouped = {((80, 80),): [shared], ((443, 443),): [shared], ((22, 22),): [[(3, 3)]]}
    as_boxes = [(r, *rest) for rest, lists in grouped.items() for rs in lists for r in rs]
    assert disjoint_grouped(grouped) == disjoint(as_boxes)
    assert disjoint_grouped({}) == []
