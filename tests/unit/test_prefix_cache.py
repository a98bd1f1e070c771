"""The prefix cache's radix tree against a plain dict of token-id prefixes."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_core.scheduler.prefix_cache import PrefixCache


def test_match_split_insert_and_duplicates():
    cache = PrefixCache()
    assert cache.insert([1, 2, 3, 4], [10, 11, 12, 13]) == []
    node, slots = cache.match([1, 2, 9])  # ends inside the edge: split after two tokens
    assert slots == [10, 11] and node.key == (1, 2) and list(node.children) == [3]
    # Positions 0-1 are cached under other slots (the request's 20, 21 are duplicates); 5 is new.
    assert cache.insert([1, 2, 5], [20, 21, 22]) == [20, 21]
    assert cache.match([1, 2, 5, 7])[1] == [10, 11, 22] and cache.num_slots == 5
    # A request that used the cached prefix itself hands back only its own new slots.
    node, slots = cache.match([1, 2, 3, 4, 8])
    assert slots == [10, 11, 12, 13]
    assert cache.insert([1, 2, 3, 4, 8], [10, 11, 12, 13, 30]) == [] and cache.num_slots == 6


def test_locked_paths_are_never_evicted_and_eviction_is_lru():
    cache = PrefixCache()
    cache.insert([1, 2, 3], [10, 11, 12])
    cache.insert([1, 2, 4], [10, 11, 13])
    cache.insert([7, 8], [20, 21])
    node, slots = cache.match([1, 2, 3])
    cache.lock(node)
    assert cache.num_locked == 3 and cache.unlocked_on_path(cache.match([1, 2, 4])[0]) == 1
    cache.match([7, 8])  # most recently used now
    assert cache.evict(1) == [13]  # the unlocked leaf used least recently
    assert sorted(cache.evict(10)) == [20, 21]  # then the rest that is unlocked; 10-12 stay locked
    assert cache.num_slots == 3 == cache.num_locked
    cache.unlock(node)
    assert cache.num_locked == 0 and sorted(cache.evict(10)) == [10, 11, 12] and cache.num_slots == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "match", "evict"]), st.lists(st.integers(0, 3), max_size=6))))
def test_against_a_dict_of_prefixes(ops):
    # Model: prefix tuple -> slot of its last token. The first insert of a prefix wins; evict drops
    # whole leaves, so what stays cached is always prefix-closed.
    cache, model, fresh = PrefixCache(), {}, itertools.count()
    for op, ids in ops:
        if op == "insert":
            slots = [model.get(tuple(ids[: i + 1]), None) for i in range(len(ids))]
            slots = [s if s is not None else next(fresh) + 1000 for s in slots]
            ours = [next(fresh) for _ in ids]  # the request's own slots
            mixed = [c if tuple(ids[: i + 1]) in model else o for i, (c, o) in enumerate(zip(slots, ours, strict=True))]
            duplicates = cache.insert(ids, mixed)
            assert duplicates == []  # it passed the cached slots where there were any
            for i in range(len(ids)):
                model.setdefault(tuple(ids[: i + 1]), mixed[i])
        elif op == "match":
            _, slots = cache.match(ids)
            expect = []
            for i in range(len(ids)):
                if tuple(ids[: i + 1]) not in model:
                    break
                expect.append(model[tuple(ids[: i + 1])])
            assert slots == expect
        else:
            for slot in cache.evict(len(ids)):
                key = next(k for k, v in model.items() if v == slot)
                del model[key]
            assert all(k[:-1] in model or len(k) == 1 for k in model)  # still prefix-closed
        assert cache.num_slots == len(model) and cache.num_locked == 0
