"""receipts.merkle and the verifier's proof check against RFC 6962/9162's published test vectors and an
independent, literal transcription of the RFC's recursive definitions (MTH and PATH)."""

import hashlib

import pytest

from receipts import merkle
from receipts.verify_bundle import inclusion_root

# The Certificate Transparency test vectors (RFC 6962 reference implementation): leaf inputs, and the
# root of the tree of the first n of them for n = 0..8.
CT_INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, audit path) from the same vectors.
CT_PROOFS = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


# --- an independent reference: RFC 9162 §2.1.1 and §2.1.3.1 read literally --------------------------

def ref_mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, data[:k]) + [ref_mth(data[k:])]
    return ref_path(m - k, data[k:]) + [ref_mth(data[:k])]


def stored_nodes(data: list[bytes]) -> dict[tuple[int, int], bytes]:
    """What kf keeps: each leaf, and the perfect nodes each append completed, by (level, index)."""
    frontier, nodes = merkle.Frontier(), {}
    for i, item in enumerate(data):
        leaf = merkle.leaf_hash(item)
        nodes[(0, i)] = leaf
        for level, node in enumerate(frontier.append(leaf), start=1):
            nodes[(level, i >> level)] = node
    return nodes


def lookup(nodes: dict[tuple[int, int], bytes]):
    return lambda level, index: nodes[(level, index)]


def test_roots_match_the_published_vectors():
    for n in range(len(CT_INPUTS) + 1):
        assert merkle.root_of(merkle.leaf_hash(x) for x in CT_INPUTS[:n]).hex() == CT_ROOTS[n]
        assert ref_mth(CT_INPUTS[:n]).hex() == CT_ROOTS[n]


@pytest.mark.parametrize(("index", "size", "path"), CT_PROOFS)
def test_proofs_match_the_published_vectors(index, size, path):
    nodes = stored_nodes(CT_INPUTS[:size])
    assert [p.hex() for p in merkle.inclusion_path(index, size, lookup(nodes))] == path
    leaf = merkle.leaf_hash(CT_INPUTS[index])
    assert inclusion_root(index, size, leaf, [bytes.fromhex(p) for p in path]).hex() == CT_ROOTS[size]


DATA = [f"receipt {i}".encode() * (i % 3 + 1) for i in range(40)]


@pytest.mark.parametrize("size", range(1, 41))
def test_frontier_root_and_every_proof_agree_with_the_reference(size):
    data = DATA[:size]
    frontier = merkle.Frontier()
    for i, item in enumerate(data):
        frontier.append(merkle.leaf_hash(item))
        assert frontier.root() == ref_mth(data[:i + 1])
    # A frontier rebuilt from the stored hex (as the head row keeps it) continues the same tree.
    restored = merkle.Frontier(frontier.size, list(frontier.hashes))
    assert restored.root() == ref_mth(data)
    root = ref_mth(data)
    nodes = stored_nodes(data)
    for m in range(size):
        path = merkle.inclusion_path(m, size, lookup(nodes))
        assert path == ref_path(m, data)
        leaf = merkle.leaf_hash(data[m])
        assert inclusion_root(m, size, leaf, path) == root
        # Only stored perfect nodes are read, each in the receipt whose append completed it.
        for level, index in merkle.nodes_needed(m, size):
            assert (level, index) in nodes
            assert merkle.completing_seq(level, index) <= size
        # Any change makes the proof fail.
        assert inclusion_root(m, size, merkle.leaf_hash(data[m] + b"!"), path) != root
        if path:
            bad = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
            assert inclusion_root(m, size, leaf, bad) != root
            assert inclusion_root(m, size, leaf, path[:-1]) != root
        assert inclusion_root(m, size, leaf, [*path, root]) is None  # too long
        if size > 1:
            other = (m + 1) % size
            assert inclusion_root(other, size, leaf, path) != root


def test_nodes_completed_by_an_append_are_those_it_stores():
    frontier = merkle.Frontier()
    for n in range(64):
        completed = frontier.append(merkle.leaf_hash(DATA[n % 40] + bytes([n])))
        # Appending leaf n completes one node per trailing 1 bit of n, and this receipt (seq n+1) is the
        # one completing_seq names for each.
        trailing = (n ^ (n + 1)).bit_length() - 1
        assert len(completed) == trailing
        for level in range(1, trailing + 1):
            assert merkle.completing_seq(level, n >> level) == n + 1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        merkle.Frontier(3, [b"x" * 32])
    with pytest.raises(ValueError):
        merkle.inclusion_path(5, 5, lambda level, index: b"")
    assert inclusion_root(0, 0, b"x" * 32, []) is None
    assert merkle.root_of([]) == merkle.EMPTY_ROOT
