"""The Merkle hash tree of RFC 6962 (Certificate Transparency), section 2.1.

Chosen because auditors already have tools for it and its leaf/node prefixes (0x00 / 0x01) make a
leaf impossible to pass off as a node. For a tree that is not a power of two in size, RFC 6962
splits at the largest power of two below the size; building bottom-up and carrying a level's
lone last node up unchanged gives exactly that tree, so the whole tree is built in one pass and
every leaf's audit path read from it, instead of recursing once per leaf.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
ALGORITHM = "RFC6962-SHA256"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Tree:
    """All levels of the tree over some leaf hashes, for the root and every audit path.

    Each level is one packed ``bytes`` of 32-byte hashes rather than a list of ``bytes`` objects:
    a run of a million records then holds 64 MB of tree instead of several times that in object
    headers, which is what lets a run be settled in memory flat in its size.
    """

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        self.levels: list[bytes] = [b"".join(leaf_hashes)]
        if len(self.levels[0]) % HASH_SIZE:
            raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes each")
        while len(self.levels[-1]) > HASH_SIZE:
            below = memoryview(self.levels[-1])
            pairs = len(below) // (2 * HASH_SIZE)
            above = b"".join(hashlib.sha256(b"\x01" + below[2 * HASH_SIZE * i : 2 * HASH_SIZE * (i + 1)]).digest()
                             for i in range(pairs))
            if len(below) % (2 * HASH_SIZE):
                above += below[-HASH_SIZE:]
            self.levels.append(above)

    @classmethod
    def from_packed(cls, leaf_hashes: bytes | bytearray) -> Tree:
        """The tree over leaf hashes laid end to end, as a settle collects them."""
        return cls([bytes(leaf_hashes)])

    @property
    def size(self) -> int:
        return len(self.levels[0]) // HASH_SIZE

    @property
    def root(self) -> bytes:
        return self.levels[-1] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        return _at(self.levels[0], index)

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 6962 PATH), nearest sibling first."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is not in a tree of {self.size}")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level) // HASH_SIZE:
                path.append(_at(level, sibling))
            index >>= 1
        return path


def _at(level: bytes, index: int) -> bytes:
    return level[HASH_SIZE * index : HASH_SIZE * (index + 1)]


def head(root_hex: str, size: int) -> dict[str, Any]:
    """A tree's head as run manifests and batch signatures both name it."""
    return {"algorithm": ALGORITHM, "root": root_hex, "size": size}


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """Whether ``proof`` leads from the leaf hash at ``index`` to ``root_hash`` (RFC 9162 2.1.3.2)."""
    return root_from_inclusion(leaf, index, size, proof) == root_hash


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``proof`` leads to from the leaf hash at ``index`` of a tree of ``size``,
    None when the proof does not fit that position (RFC 9162 2.1.3.2): a signed record carries
    no root, only its proof, and the root it leads to is what the batch signature must cover."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
