"""Token-granular prefix cache: a radix tree from token ids to the KV slots that hold them.

When a request finishes, its tokens and their slots go into the tree instead of back to the free
list; a later request whose prompt starts with the same tokens (a system prompt, an earlier turn
of the conversation) takes those slots as its prefix and prefills only the rest. Running requests
lock the path they use (ref counts on the nodes up to the root), so it is never evicted under them;
unlocked leaves are evicted least recently used first when the free list runs short.

Keys are ints: token ids, or for image tokens a negative key per image content (image_cache_keys).
Pure CPU: ints, tuples and lists. The router owns it (router.py).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence


def image_cache_keys(prompt_ids: list[int], embeds, image_token: int | None, per_image: int | None) -> list[int]:
    """Prefix-cache keys of an image prompt: its ids, with each image's tokens replaced by one
    negative key from a hash of that image's embedding rows (embeds: an array, one row per image
    token; the same image at the same place, after the same tokens, then shares its KV; any other
    image does not)."""
    positions = [i for i, t in enumerate(prompt_ids) if t == image_token]
    per_image = per_image or len(positions) or 1
    keys = list(prompt_ids)
    for start in range(0, len(positions), per_image):
        digest = hashlib.blake2b(embeds[start : start + per_image].tobytes(), digest_size=8).digest()
        key = -1 - (int.from_bytes(digest, "little") >> 2)
        for i in positions[start : start + per_image]:
            keys[i] = key
    return keys


class CacheNode:
    __slots__ = ("children", "key", "last_used", "parent", "ref", "slots")

    def __init__(self, key: tuple[int, ...], slots: list[int], parent: CacheNode | None) -> None:
        self.key = key  # token ids on the edge from the parent to this node
        self.slots = slots  # their KV slots, same length
        self.parent = parent
        self.children: dict[int, CacheNode] = {}  # by first token of the child's key
        self.ref = 0  # running requests whose prefix ends at or below this node
        self.last_used = 0


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self) -> None:
        self.root = CacheNode((), [], None)
        self.num_slots = 0  # slots the tree holds
        self.num_locked = 0  # of those, in nodes with ref > 0
        self._clock = 0

    @property
    def num_evictable(self) -> int:
        return self.num_slots - self.num_locked

    def match(self, ids: Sequence[int]) -> tuple[CacheNode, list[int]]:
        """The deepest node on the longest cached prefix of `ids` and the slots of that prefix.
        An edge matched part-way is split, so the prefix always ends on a node."""
        self._clock += 1
        node, slots, i = self.root, [], 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            k = _common(child.key, ids[i:])
            if k < len(child.key):
                child = self._split(child, k)
            child.last_used = self._clock
            slots += child.slots
            node, i = child, i + k
        return node, slots

    def unlocked_on_path(self, node: CacheNode) -> int:
        """Slots that lock(node) would add to num_locked."""
        n = 0
        while node is not self.root and node.ref == 0:
            n += len(node.slots)
            node = node.parent
        return n

    def lock(self, node: CacheNode) -> None:
        while node is not self.root:
            if node.ref == 0:
                self.num_locked += len(node.slots)
            node.ref += 1
            node = node.parent

    def unlock(self, node: CacheNode) -> None:
        while node is not self.root:
            node.ref -= 1
            assert node.ref >= 0, "prefix cache: unlock without lock"
            if node.ref == 0:
                self.num_locked -= len(node.slots)
            node = node.parent

    def insert(self, ids: Sequence[int], slots: Sequence[int]) -> list[int]:
        """Adopt the slots of `ids` (a finished request's stored tokens). Returns the slots the
        caller must free: its own copies of tokens the tree already had under other slots."""
        assert len(ids) == len(slots)
        self._clock += 1
        duplicates: list[int] = []
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                leaf = CacheNode(tuple(ids[i:]), list(slots[i:]), node)
                leaf.last_used = self._clock
                node.children[ids[i]] = leaf
                self.num_slots += len(leaf.slots)
                return duplicates
            k = _common(child.key, ids[i:])
            if k < len(child.key):
                child = self._split(child, k)
            duplicates += [ours for ours, cached in zip(slots[i : i + k], child.slots, strict=True) if ours != cached]
            child.last_used = self._clock
            node, i = child, i + k
        return duplicates

    def evict(self, num: int) -> list[int]:
        """Free at least `num` slots (fewer if not enough are unlocked) from unlocked leaves,
        least recently used first; returns them."""
        heap = [(n.last_used, id(n), n) for n in self._unlocked_leaves()]
        heapq.heapify(heap)
        freed: list[int] = []
        while heap and len(freed) < num:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            freed += leaf.slots
            self.num_slots -= len(leaf.slots)
            if parent is not self.root and not parent.children and parent.ref == 0:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))
        return freed

    def _unlocked_leaves(self) -> list[CacheNode]:
        leaves, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.ref == 0:
                leaves.append(node)
        return leaves

    def _split(self, child: CacheNode, k: int) -> CacheNode:
        """Cut child's edge after k tokens; returns the new upper node (child keeps the rest)."""
        parent = child.parent
        upper = CacheNode(child.key[:k], child.slots[:k], parent)
        upper.ref, upper.last_used = child.ref, child.last_used
        parent.children[upper.key[0]] = upper
        child.key, child.slots, child.parent = child.key[k:], child.slots[k:], upper
        upper.children[child.key[0]] = child
        return upper


__all__ = ["CacheNode", "PrefixCache", "image_cache_keys"]
