"""The Merkle hash tree of RFC 6962 (Certificate Transparency), section 2.1.

Chosen because auditors already have tools for it and its leaf/node prefixes (0x00 / 0x01) make a
leaf impossible to pass off as a node. For a tree that is not a power of two in size, RFC 6962
splits at the largest power of two below the size; building bottom-up and carrying a level's
lone last node up unchanged gives exactly that tree, so the whole tree is built in one pass and
every leaf's audit path read from it, instead of recursing once per leaf.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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
    a tree of a million leaves holds 64 MB instead of several times that in object headers. A
    run's tree, which grows with the run, is a :class:`SpooledTree` instead.
    """

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        self.levels: list[bytes] = [b"".join(leaf_hashes)]
        if len(self.levels[0]) % HASH_SIZE:
            raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes each")
        while len(self.levels[-1]) > HASH_SIZE:
            self.levels.append(_level_above(self.levels[-1]))
        self.widths = [len(level) // HASH_SIZE for level in self.levels]

    def _hash(self, level: int, index: int) -> bytes:
        return self.levels[level][HASH_SIZE * index : HASH_SIZE * (index + 1)]

    @property
    def size(self) -> int:
        return self.widths[0]

    @property
    def root(self) -> bytes:
        return self._hash(len(self.widths) - 1, 0) if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        return self._hash(0, index)

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 6962 PATH), nearest sibling first."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is not in a tree of {self.size}")
        path = []
        for level, width in enumerate(self.widths[:-1]):
            sibling = index ^ 1
            if sibling < width:
                path.append(self._hash(level, sibling))
            index >>= 1
        return path


class SpooledTree(Tree):
    """The tree of a run, its levels in a temporary file, read back a block at a time.

    A run's tree grows with the run (64 bytes a record, leaves included): in memory, a backfill of
    ten million records would hold 640 MB of it. Levels are built and read in blocks of ``block``
    hashes, and a settle asks for leaves and audit paths in leaf order, so each block is read once
    and the memory stays one block a level (1 MB), whatever the run's size.
    """

    def __init__(self, spool: LeafSpool, block: int = 1 << 15) -> None:
        if block < 2 or block % 2:
            raise ValueError("a block must hold an even number of hashes, so pairs never straddle two")
        self._file, self._block = spool.file, block
        self._file.flush()
        self._fd = self._file.fileno()
        self.offsets, self.widths = [0], [spool.size]
        while self.widths[-1] > 1:  # each level appended to the file after the one below
            below, width = self.offsets[-1], self.widths[-1]
            self.offsets.append(below + HASH_SIZE * width)
            self._file.seek(self.offsets[-1])
            for start in range(0, width, block):
                self._file.write(_level_above(self._read(below, start, min(block, width - start))))
            self._file.flush()
            self.widths.append((width + 1) // 2)
        self._cached: dict[int, tuple[int, bytes]] = {}  # level -> (block number, its hashes)

    def _read(self, offset: int, start: int, count: int) -> bytes:
        data = os.pread(self._fd, HASH_SIZE * count, offset + HASH_SIZE * start)
        if len(data) != HASH_SIZE * count:
            raise OSError(f"the tree's spool file ended early ({len(data)} of {HASH_SIZE * count} bytes)")
        return data

    def _hash(self, level: int, index: int) -> bytes:
        number, at = divmod(index, self._block)
        cached = self._cached.get(level)
        if cached is None or cached[0] != number:
            start = number * self._block
            cached = self._cached[level] = (number, self._read(self.offsets[level], start,
                                                               min(self._block, self.widths[level] - start)))
        return cached[1][HASH_SIZE * at : HASH_SIZE * (at + 1)]


class LeafSpool:
    """Leaf hashes laid end to end in a temporary file as they come, for a :class:`SpooledTree`."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="lienthong-tree-")
        self.size = 0

    def add(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes each")
        self.file.write(leaf)
        self.size += 1

    def tree(self) -> SpooledTree:
        return SpooledTree(self)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> LeafSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _level_above(below: bytes) -> bytes:
    """The level above a run of hashes that starts on a pair: each pair's node, and a lone last
    hash carried up unchanged."""
    view = memoryview(below)
    paired = len(below) // (2 * HASH_SIZE) * 2 * HASH_SIZE
    return b"".join(hashlib.sha256(b"\x01" + view[i : i + 2 * HASH_SIZE]).digest()
                    for i in range(0, paired, 2 * HASH_SIZE)) + below[paired:]


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
