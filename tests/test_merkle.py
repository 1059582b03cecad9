"""The Merkle tree against the Certificate Transparency reference vectors, and its proofs."""

from __future__ import annotations

import pytest

from lienthong.signing import merkle

# certificate-transparency merkle_tree_test.cc: eight leaf inputs and the root over the first n.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, audit path) from the same suite.
CT_PATHS = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(d) for d in CT_LEAVES[:n]]


def test_empty_tree_is_the_hash_of_nothing() -> None:
    assert merkle.Tree([]).root.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_certificate_transparency(n: int) -> None:
    assert merkle.Tree(_leaves(n)).root.hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize("index,size,path", CT_PATHS)
def test_audit_paths_match_certificate_transparency(index: int, size: int, path: list[str]) -> None:
    tree = merkle.Tree(_leaves(size))
    assert [p.hex() for p in tree.proof(index)] == path
    assert merkle.verify_inclusion(tree.leaf(index), index, size, tree.proof(index), tree.root)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 33, 100])
def test_every_proof_verifies_and_no_other_leaf_or_place_does(size: int) -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(size)]
    tree = merkle.Tree(leaves)
    for i in range(size):
        proof = tree.proof(i)
        assert merkle.verify_inclusion(leaves[i], i, size, proof, tree.root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), i, size, proof, tree.root)
        if size > 1:
            assert not merkle.verify_inclusion(leaves[i], (i + 1) % size, size, proof, tree.root)
            assert not merkle.verify_inclusion(leaves[i], i, size, proof[:-1], tree.root)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 8, 9, 31, 64, 100])
@pytest.mark.parametrize("block", [2, 4, 6, 1 << 15])
def test_a_spooled_tree_is_the_tree_in_memory(size: int, block: int) -> None:
    """Blocks smaller than a level make every level straddle several reads, and odd widths carry
    a lone hash up across a block's end: the root, every leaf and every path must still agree."""
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(size)]
    in_memory = merkle.Tree(leaves)
    with merkle.LeafSpool() as spool:
        for leaf in leaves:
            spool.add(leaf)
        spooled = merkle.SpooledTree(spool, block=block)
        assert (spooled.size, spooled.root) == (in_memory.size, in_memory.root)
        for i in [*range(size), *reversed(range(size))]:  # in leaf order as a settle reads, and back
            assert spooled.leaf(i) == leaves[i]
            assert spooled.proof(i) == in_memory.proof(i)


def test_a_spool_takes_only_whole_hashes_and_a_block_only_whole_pairs() -> None:
    with merkle.LeafSpool() as spool:
        with pytest.raises(ValueError, match="32 bytes"):
            spool.add(b"\x00" * 31)
        spool.add(merkle.leaf_hash(b"a"))
        with pytest.raises(ValueError, match="even number"):
            merkle.SpooledTree(spool, block=3)
