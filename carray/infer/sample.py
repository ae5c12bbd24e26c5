"""A seeded sample of a collection's keys, spread over all of it. No Ray here.

Each key gets a priority from a keyed hash of its name; the sample is the keys of lowest priority
(a bottom-k sample). That is a uniform random sample whatever order the listing tasks hand the keys
in, the same sample for the same seed and collection, and the k of lowest priority of a part of the
collection merge into the k of the whole. The first n of a sample of k are the sample of n.
"""
from __future__ import annotations

import hashlib
import heapq
from typing import Optional


def priority(key: str, seed: int) -> int:
    """A key's place in the seeded random order (64-bit; smaller comes first)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big")


class BottomK:
    """The k keys of lowest priority among all those added, holding k keys at most."""

    def __init__(self, k: int, seed: int):
        self.k, self.seed = k, seed
        self.heap: list[tuple[int, str]] = []  # (-priority, key): the root is the worst kept
        self.count = 0

    def add(self, key: str) -> tuple[bool, Optional[str]]:
        """Count `key`; returns (whether it is in the sample now, the key it pushed out, or None), for
        a caller that keeps something per sampled key."""
        self.count += 1
        if self.k <= 0:
            return False, None
        item = (-priority(key, self.seed), key)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
            return True, None
        if item > self.heap[0]:
            return True, heapq.heapreplace(self.heap, item)[1]
        return False, None

    def keys(self) -> list[str]:
        """The sample, in priority order (so the first n are the sample of n)."""
        return [key for _, key in sorted(self.heap, reverse=True)]
