"""The router's admission arithmetic: the most KV slots a set of requests will hold at once.

Pure integers. `Router._admit` keeps (-lifetime, held, growth) entries sorted and asks `peak` whether one more
request fits the pool; `peak_slots` and `fits` are the same check for plain lists (tests, docs).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


def peak(entries: list[tuple[int, int, int]]) -> int:
    """entries: (-L_i, a_i, g_i) sorted ascending, i.e. by lifetime L descending.

    Request i holds a_i slots now, grows by at most one slot per decode step and by at most
    g_i <= L_i slots in all, and has freed everything after L_i decode steps. Usage only grows
    between finishes, so the peak is reached just before some request k finishes:
    max_k (sum_{i<=k} a_i + sum_{i<=k} min(L_k, g_i)).

    O(n log n): going down the lifetimes, a g_i below the current L_k counts g_i (kept in a heap of
    the largest first), one at or above it counts L_k; a g_i moves from the first kind to the second
    once, when L_k falls to it.
    """
    peak = held = below_sum = at_or_above = 0
    below: list[int] = []  # -g_i of the requests so far whose g_i < the current lifetime
    for neg_life, a, growth in entries:
        life = -neg_life
        held += a
        if growth >= life:
            at_or_above += 1
        else:
            heapq.heappush(below, -growth)
            below_sum += growth
        while below and -below[0] >= life:
            below_sum += heapq.heappop(below)
            at_or_above += 1
        value = held + below_sum + at_or_above * life
        if value > peak:
            peak = value
    return peak


def peak_slots(held: Iterable[int], remaining: Iterable[int], growth: Iterable[int] | None = None) -> int:
    """Most slots in use at once if request i holds a_i = held[i] slots now, grows by one slot
    per decode step (at most growth[i] in all; default remaining[i]), and frees everything after
    its last b_i = remaining[i] steps.

    With b sorted descending and growth == remaining, the peak is reached just before some request
    k finishes: max_k (sum_{i<=k} a_i + k * b_k).
    """
    remaining = list(remaining)
    growth = remaining if growth is None else list(growth)
    return peak(sorted(zip((-b for b in remaining), held, growth, strict=True)))


def fits(held: Iterable[int], remaining: Iterable[int], num_slots: int, growth: Iterable[int] | None = None) -> bool:
    """True iff the requests can all run to their budgets without exceeding `num_slots`."""
    return peak_slots(held, remaining, growth) <= num_slots
