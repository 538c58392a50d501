"""RFC 9162 (Certificate Transparency 2.0) Merkle trees, section 2.1: the shape and hashes of a
workspace's receipt log, and inclusion proofs from the hashes kf keeps.

leaf = SHA-256(0x00 ‖ receipt bytes), node = SHA-256(0x01 ‖ left ‖ right); a tree of n > 1 leaves
has the largest power of two below n on its left. A "perfect node" (level, index) is the root of the
complete subtree over leaves [index·2^level, (index+1)·2^level): every subtree that RFC 9162's
recursion visits is either such a node or a right edge made of them, so these nodes (level 0 = the
leaves) are all kf stores, each once, in the receipt whose append completed it.

Proof *verification* lives in verify_bundle.py (stdlib + cryptography + rfc8785, no Django), so the
offline verifier and the server share one implementation.
"""

import hashlib
from collections.abc import Callable, Iterable

EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeLookup = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n ≥ 2): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def completing_seq(level: int, index: int) -> int:
    """The 1-based seq of the receipt whose append completed perfect node (level, index)."""
    return (index + 1) << level


class Frontier:
    """The roots of the perfect subtrees a tree of `size` leaves is made of, left to right (one per
    set bit of `size`, largest first). Appending costs O(log n) hashes at worst (amortized one), the
    root O(log n): what keeps an append independent of the log's length."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.hashes = list(hashes)
        if len(self.hashes) != size.bit_count():
            raise ValueError(f"a frontier of {size} leaves has {size.bit_count()} hashes, not {len(self.hashes)}")

    def append(self, leaf: bytes) -> list[bytes]:
        """Adds a leaf hash; returns the perfect nodes this completed, levels 1, 2, … in order."""
        completed: list[bytes] = []
        current, rest = leaf, self.size
        while rest & 1:
            current = node_hash(self.hashes.pop(), current)
            completed.append(current)
            rest >>= 1
        self.hashes.append(current)
        self.size += 1
        return completed

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root

    def copy(self) -> "Frontier":
        return Frontier(self.size, self.hashes)


def root_of(leaves: Iterable[bytes]) -> bytes:
    """MTH over leaf hashes."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def subtree_hash(start: int, end: int, node: NodeLookup) -> bytes:
    """MTH(D[start:end]) for a range RFC 9162's recursion produces (start is a multiple of the
    largest power of two ≤ end - start), from perfect nodes."""
    n = end - start
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return node(level, start >> level)
    k = split_point(n)
    return node_hash(subtree_hash(start, start + k, node), subtree_hash(start + k, end, node))


def inclusion_path(leaf_index: int, tree_size: int, node: NodeLookup) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, bottom-up, from perfect nodes."""
    if not 0 <= leaf_index < tree_size:
        raise ValueError(f"leaf {leaf_index} is not in a tree of {tree_size}")
    siblings: list[bytes] = []
    start, end = 0, tree_size
    while end - start > 1:
        k = split_point(end - start)
        if leaf_index < start + k:
            siblings.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            siblings.append(subtree_hash(start, start + k, node))
            start += k
    siblings.reverse()
    return siblings


def nodes_needed(leaf_index: int, tree_size: int) -> set[tuple[int, int]]:
    """The perfect nodes (level, index) that inclusion_path reads: fetched in one query."""
    needed: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> bytes:
        needed.add((level, index))
        return EMPTY_ROOT

    inclusion_path(leaf_index, tree_size, record)
    return needed
