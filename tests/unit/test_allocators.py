"""SlotAllocator / RowAllocator: a free stack plus a double-free bitmap (CPU only)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_core.scheduler import AllocatorError, RowAllocator, SlotAllocator


def test_fresh_pool_hands_out_ascending_slots():
    pool = SlotAllocator(8)
    assert pool.alloc(3) == [0, 1, 2]
    assert pool.alloc(2) == [3, 4]
    assert (pool.num_free, pool.num_used, pool.num_slots) == (3, 5, 8)


def test_freed_slots_come_back_in_order():
    pool = SlotAllocator(8)
    a = pool.alloc(4)
    pool.free(a)
    assert pool.alloc(4) == a


def test_alloc_zero_and_too_many():
    pool = SlotAllocator(4)
    assert pool.alloc(0) == []
    with pytest.raises(AllocatorError):
        pool.alloc(5)
    pool.alloc(4)
    with pytest.raises(AllocatorError):
        pool.alloc(1)
    with pytest.raises(AllocatorError):
        pool.alloc(-1)


def test_double_free_and_foreign_free_are_errors_and_roll_back():
    pool = SlotAllocator(6)
    slots = pool.alloc(3)
    pool.free(slots[:1])
    with pytest.raises(AllocatorError):
        pool.free(slots[:1])
    with pytest.raises(AllocatorError):
        pool.free([slots[1], slots[1]])  # duplicate inside one call
    with pytest.raises(AllocatorError):
        pool.free([5])  # never allocated
    with pytest.raises(AllocatorError):
        pool.free([6])  # out of range
    with pytest.raises(AllocatorError):
        pool.free([-1])
    # The failed calls left the state untouched: slots[1:] are still held.
    assert pool.num_used == 2
    pool.free(slots[1:])
    assert pool.num_free == 6


def test_row_allocator():
    rows = RowAllocator(2)
    a, b = rows.alloc(), rows.alloc()
    assert {a, b} == {0, 1} and rows.num_free == 0
    with pytest.raises(AllocatorError):
        rows.alloc()
    rows.free(a)
    with pytest.raises(AllocatorError):
        rows.free(a)
    assert rows.alloc() == a
    with pytest.raises(ValueError):
        RowAllocator(0)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=60))
def test_random_alloc_free_matches_a_set_model(size, ops):
    pool = SlotAllocator(size)
    held: list[list[int]] = []
    for is_alloc, n in ops:
        if is_alloc:
            if n > pool.num_free:
                with pytest.raises(AllocatorError):
                    pool.alloc(n)
                continue
            held.append(pool.alloc(n))
        elif held:
            pool.free(held.pop(n % len(held)))
        flat = [s for group in held for s in group]
        assert len(flat) == len(set(flat)) == pool.num_used
        assert all(0 <= s < size for s in flat)
        assert pool.num_free + pool.num_used == size
    for group in held:
        pool.free(group)
    assert pool.num_free == size
    assert sorted(pool.alloc(size)) == list(range(size))
