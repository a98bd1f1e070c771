"""CPU free lists for KV token slots and request-table rows (docs/ARCHITECTURE.md).

Both are a Python list used as a stack plus a bytearray bitmap of the ids in use, so that a
double free (or freeing an id that was never handed out) is caught at O(1) per id.
"""

from __future__ import annotations

from collections.abc import Iterable


class AllocatorError(RuntimeError):
    """Out of ids, or an id freed twice / never allocated."""


class _FreeStack:
    """Ids 0..size-1. A fresh stack hands them out in ascending order; ids freed together come
    back in the same order, which keeps a request's slots mostly contiguous."""

    def __init__(self, size: int, kind: str):
        if size < 1:
            raise ValueError(f"number of {kind}s must be >= 1, got {size}")
        self.size = size
        self._kind = kind
        self._free = list(range(size - 1, -1, -1))  # top of the stack is the end
        self._used = bytearray(size)  # 1 where the id is handed out

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.size - len(self._free)

    def _take(self, n: int) -> list[int]:
        if n < 0 or n > len(self._free):
            raise AllocatorError(f"cannot allocate {n} {self._kind}s: {len(self._free)} free of {self.size}")
        if n == 0:
            return []
        ids = self._free[-n:]
        del self._free[-n:]
        ids.reverse()
        used = self._used
        for i in ids:
            used[i] = 1
        return ids

    def _give(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        used, size = self._used, self.size
        for k, i in enumerate(ids):
            if not 0 <= i < size or not used[i]:
                for j in ids[:k]:  # roll back so the allocator stays consistent
                    used[j] = 1
                raise AllocatorError(f"{self._kind} {i} freed but not allocated (double free?)")
            used[i] = 0
        ids.reverse()
        self._free.extend(ids)


class SlotAllocator(_FreeStack):
    """Free list of the `num_slots` token slots of the KV pool."""

    def __init__(self, num_slots: int):
        super().__init__(num_slots, "slot")

    @property
    def num_slots(self) -> int:
        return self.size

    def alloc(self, n: int) -> list[int]:
        return self._take(n)

    def free(self, slots: Iterable[int]) -> None:
        self._give(slots)


class RowAllocator(_FreeStack):
    """Free list of the `max_reqs` rows of the device request table `req_to_slot`."""

    def __init__(self, max_reqs: int):
        super().__init__(max_reqs, "row")

    def alloc(self) -> int:
        return self._take(1)[0]

    def free(self, row: int) -> None:
        self._give((row,))


__all__ = ["AllocatorError", "RowAllocator", "SlotAllocator"]
