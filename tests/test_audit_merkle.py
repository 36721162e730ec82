"""The SM3 Merkle tree against an independent RFC 6962 implementation written here, its
inclusion and consistency proofs (all of them, for small trees), and canonical JSON."""

from __future__ import annotations

import hashlib
import math

import pytest

from tongban.audit.canonical import canonical_bytes, canonical_json, check_values
from tongban.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_from_consistency,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

ROOT_SIZES = 70
PROOF_SIZES = 40


# --- an independent RFC 6962 reference, straight from the RFC's recursive definitions ---


def sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def ref_leaf(entry: bytes) -> bytes:
    return sm3(b"\x00" + entry)


def ref_split(n: int) -> int:
    """The largest power of two smaller than n (RFC 6962 section 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf *hashes* (the tree stores hashes, not entries)."""
    n = len(leaves)
    if n == 0:
        return sm3(b"")
    if n == 1:
        return leaves[0]
    k = ref_split(n)
    return sm3(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 6962 section 2.1.1."""
    n = len(leaves)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), RFC 6962 section 2.1.2."""
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], whole), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    if m in (0, len(leaves)):
        return []
    return ref_subproof(m, leaves, True)


def entries(n: int) -> list[bytes]:
    return [b'{"index":%d,"kind":"test","time":"t"}' % i for i in range(n)]


LEAVES = [ref_leaf(e) for e in entries(ROOT_SIZES + 1)]


@pytest.fixture(scope="module")
def big_tree() -> MerkleTree:
    return MerkleTree(LEAVES)


def flip(h: bytes, byte: int = 0) -> bytes:
    return h[:byte] + bytes([h[byte] ^ 0x01]) + h[byte + 1 :]


# --- hashing ---------------------------------------------------------------------------


def test_sm3_known_answers():
    # GB/T 32905-2016 example 1, and the empty message (the empty tree's root).
    assert sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3(b"").hex() == "1ab21d8355cfa17f8e61194831e81a8f22bec8c728fefb747ed035eb5082aa2b"
    assert sm3(b"") == EMPTY_ROOT
    assert MerkleTree().root() == EMPTY_ROOT
    assert HASH_SIZE == 32


def test_leaf_and_node_hashes_use_domain_separation():
    assert leaf_hash(b"entry") == sm3(b"\x00entry")
    a, b = sm3(b"a"), sm3(b"b")
    assert node_hash(a, b) == sm3(b"\x01" + a + b)
    assert leaf_hash(b"\x01" + a + b) != node_hash(a, b)


# --- roots -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(ROOT_SIZES + 1))
def test_root_matches_independent_mth(n: int):
    tree = MerkleTree()
    for i, h in enumerate(LEAVES[:n]):
        assert tree.append(h) == i
    assert tree.size == n
    assert tree.root() == ref_mth(LEAVES[:n])


def test_historical_roots_of_a_grown_tree(big_tree: MerkleTree):
    for n in range(ROOT_SIZES + 1):
        assert big_tree.root(n) == ref_mth(LEAVES[:n])
    with pytest.raises(ValueError, match="beyond"):
        big_tree.root(big_tree.size + 1)
    with pytest.raises(ValueError, match="beyond"):
        big_tree.root(-1)


def test_leaf_access(big_tree: MerkleTree):
    assert big_tree.leaf(0) == LEAVES[0]
    assert big_tree.leaf(big_tree.size - 1) == LEAVES[big_tree.size - 1]
    for bad in (-1, big_tree.size):
        with pytest.raises(IndexError):
            big_tree.leaf(bad)


def test_leaf_hash_length_is_checked():
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree().append(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree.from_leaf_hashes(b"\x00" * 33)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 64, 70])
def test_from_leaf_hashes_equals_appends_and_extends(n: int):
    built = MerkleTree.from_leaf_hashes(b"".join(LEAVES[:n]))
    grown = MerkleTree(LEAVES[:n])
    assert built.size == grown.size == n
    for size in range(n + 1):
        assert built.root(size) == grown.root(size)
    for i in range(n):
        assert built.inclusion_proof(i, n) == grown.inclusion_proof(i, n)
    # A rebuilt tree keeps growing exactly like one that was appended to all along.
    more = LEAVES[n : n + 9]
    built.extend(more)
    assert built.size == n + len(more)
    assert built.root() == ref_mth(LEAVES[: n + len(more)])
    for m in range(1, built.size + 1):
        assert built.consistency_proof(m, built.size) == ref_proof(m, LEAVES[: built.size])


def test_from_leaf_hashes_accepts_bytearray():
    tree = MerkleTree.from_leaf_hashes(bytearray(b"".join(LEAVES[:5])))
    assert tree.root() == ref_mth(LEAVES[:5])


# --- inclusion proofs ------------------------------------------------------------------


def test_every_inclusion_proof_verifies(big_tree: MerkleTree):
    for n in range(1, PROOF_SIZES + 1):
        root = ref_mth(LEAVES[:n])
        for i in range(n):
            proof = big_tree.inclusion_proof(i, n)
            assert proof == ref_path(i, LEAVES[:n]), (i, n)
            assert len(proof) <= math.ceil(math.log2(n)) if n > 1 else proof == []
            assert root_from_inclusion(i, n, LEAVES[i], proof) == root
            assert verify_inclusion(i, n, LEAVES[i], proof, root)


def test_tampered_inclusion_proofs_fail(big_tree: MerkleTree):
    for n in range(1, PROOF_SIZES + 1):
        root = ref_mth(LEAVES[:n])
        for i in range(n):
            leaf = LEAVES[i]
            proof = big_tree.inclusion_proof(i, n)
            assert not verify_inclusion(i, n, flip(leaf), proof, root)
            assert not verify_inclusion(i, n, leaf, proof, flip(root, 31))
            assert not verify_inclusion(i, n, LEAVES[(i + 1) % n], proof, root) or n == 1
            for j in range(len(proof)):
                bad = [*proof[:j], flip(proof[j], j % 32), *proof[j + 1 :]]
                assert not verify_inclusion(i, n, leaf, bad, root)
            assert not verify_inclusion(i, n, leaf, [*proof, LEAVES[0]], root)
            if proof:
                assert not verify_inclusion(i, n, leaf, proof[:-1], root)
                assert not verify_inclusion(i, n, leaf, proof[::-1], root) or len(proof) == 1
            # The same proof claimed for another position or another tree size.
            for other in (i - 1, i + 1):
                if 0 <= other < n:
                    assert not verify_inclusion(other, n, leaf, proof, root)
            # The same proof claimed for another tree size: never valid for that tree, and
            # a path of the wrong length is refused outright. (Equal-length paths for two
            # sizes can share a shape: the signed checkpoint is what binds the size.)
            for size in (n - 1, n + 1):
                if size > i:
                    assert not verify_inclusion(i, size, leaf, proof, ref_mth(LEAVES[:size]))
                    if len(ref_path(i, LEAVES[:size])) != len(proof):
                        assert not verify_inclusion(i, size, leaf, proof, root)


def test_inclusion_malformed_inputs():
    leaf = LEAVES[0]
    for index, size in ((0, 0), (-1, 3), (3, 3), (5, 3)):
        with pytest.raises(ProofError):
            root_from_inclusion(index, size, leaf, [])
        assert not verify_inclusion(index, size, leaf, [], leaf)
    with pytest.raises(ProofError):
        root_from_inclusion(0, 2, leaf, [b"\x00" * 31])
    with pytest.raises(ProofError):
        root_from_inclusion(0, 4, leaf, [LEAVES[1]])  # too short
    with pytest.raises(ProofError):
        root_from_inclusion(0, 1, leaf, [LEAVES[1]])  # too long
    assert verify_inclusion(0, 1, leaf, [], leaf)
    tree = MerkleTree(LEAVES[:4])
    for index, size in ((0, 0), (4, 4), (0, 5), (-1, 2)):
        with pytest.raises(ValueError, match="need"):
            tree.inclusion_proof(index, size)


# --- consistency proofs ----------------------------------------------------------------


def test_every_consistency_proof_verifies(big_tree: MerkleTree):
    for n in range(1, PROOF_SIZES + 1):
        second = ref_mth(LEAVES[:n])
        for m in range(1, n + 1):
            first = ref_mth(LEAVES[:m])
            proof = big_tree.consistency_proof(m, n)
            assert proof == ref_proof(m, LEAVES[:n]), (m, n)
            assert root_from_consistency(m, n, first, proof) == second
            assert verify_consistency(m, n, first, second, proof)


def test_tampered_consistency_proofs_fail(big_tree: MerkleTree):
    for n in range(1, PROOF_SIZES + 1):
        second = ref_mth(LEAVES[:n])
        for m in range(1, n + 1):
            first = ref_mth(LEAVES[:m])
            proof = big_tree.consistency_proof(m, n)
            assert not verify_consistency(m, n, flip(first), second, proof)
            assert not verify_consistency(m, n, first, flip(second, 7), proof)
            for j in range(len(proof)):
                bad = [*proof[:j], flip(proof[j], 3), *proof[j + 1 :]]
                assert not verify_consistency(m, n, first, second, bad)
            assert not verify_consistency(m, n, first, second, [*proof, LEAVES[0]])
            if proof:
                assert not verify_consistency(m, n, first, second, proof[:-1])
            # Claimed for neighbouring sizes: never valid for those trees' roots, and a
            # proof of the wrong shape is refused even with the original roots.
            for m2, n2 in ((m - 1, n), (m + 1, n), (m, n + 1), (m, n - 1)):
                if 0 < m2 <= n2 and (m2, n2) != (m, n):
                    r1, r2 = ref_mth(LEAVES[:m2]), ref_mth(LEAVES[:n2])
                    if proof or m2 != n2:
                        assert not verify_consistency(m2, n2, r1, r2, proof), (m2, n2, m, n)
                    if len(ref_proof(m2, LEAVES[:n2])) != len(proof):
                        assert not verify_consistency(m2, n2, first, second, proof), (m2, n2)


def test_consistency_with_a_forked_tree_fails():
    forked = [*LEAVES[:10], *(sm3(b"fork%d" % i) for i in range(10, 20))]
    honest = MerkleTree(LEAVES[:20])
    fork = MerkleTree(forked)
    first = honest.root(10)
    assert fork.root(10) == first  # the fork shares the first ten leaves...
    proof = fork.consistency_proof(10, 20)
    assert verify_consistency(10, 20, first, fork.root(), proof)
    # ...but cannot be passed off as the honest tree, nor rewrite leaf 9 and stay consistent.
    assert not verify_consistency(10, 20, first, honest.root(), proof)
    rewritten = MerkleTree([*LEAVES[:9], sm3(b"x"), *LEAVES[10:20]])
    assert not verify_consistency(
        10, 20, first, rewritten.root(), rewritten.consistency_proof(10, 20)
    )


def test_consistency_edge_cases():
    tree = MerkleTree(LEAVES[:8])
    root = tree.root()
    assert tree.consistency_proof(0, 8) == []
    assert tree.consistency_proof(8, 8) == []
    assert verify_consistency(0, 8, EMPTY_ROOT, root, [])  # the empty tree precedes any tree
    assert not verify_consistency(0, 8, EMPTY_ROOT, root, [LEAVES[0]])
    assert verify_consistency(8, 8, root, root, [])
    assert not verify_consistency(8, 8, root, flip(root), [])
    with pytest.raises(ProofError, match="empty"):
        root_from_consistency(8, 8, root, [LEAVES[0]])
    for first, second in ((0, 8), (5, 4), (-1, 3)):
        with pytest.raises(ProofError):
            root_from_consistency(first, second, root, [LEAVES[0]])
    with pytest.raises(ProofError, match="malformed"):
        root_from_consistency(3, 8, root, [])
    with pytest.raises(ProofError, match="malformed"):
        root_from_consistency(3, 8, root, [b"\x00" * 31])
    for first, second in ((5, 4), (0, 9), (-1, 2)):
        with pytest.raises(ValueError, match="need"):
            tree.consistency_proof(first, second)


# --- canonical JSON --------------------------------------------------------------------


def test_canonical_json_sorted_compact_utf8():
    value = {"b": 1, "a": "数据共享", "c": [True, None, {"z": "é", "y": -3}], "A": "upper"}
    assert (
        canonical_json(value)
        == '{"A":"upper","a":"数据共享","b":1,"c":[true,null,{"y":-3,"z":"é"}]}'.encode()
    )
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1})
    assert b"\\u" not in canonical_json({"x": "数据"})
    assert canonical_json({"q": 'say "hi"\n'}) == b'{"q":"say \\"hi\\"\\n"}'
    assert canonical_json({"big": 2**70}) == b'{"big":1180591620717411303424}'
    assert canonical_json({"t": (1, 2)}) == b'{"t":[1,2]}'


@pytest.mark.parametrize(
    "value",
    [
        {"x": 1.5},
        {"x": 1.0},
        {"x": [1, 2.0]},
        {"x": {"y": {"z": 0.1}}},
        {"x": float("nan")},
        {"x": float("inf")},
        {1: "int key"},
        {"x": {1, 2}},
        {"x": b"bytes"},
        {"x": object()},
    ],
)
def test_canonical_json_refuses_non_json_values(value: dict[object, object]):
    with pytest.raises(TypeError):
        canonical_json(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_values(value)  # type: ignore[arg-type]


def test_nan_refused_even_without_the_value_check():
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            canonical_bytes({"x": bad})
