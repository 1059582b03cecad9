"""The sealed record as it travels to the portal: the payload plus ``PhienBan``, ``BangChung`` and
``ChuKySo``.

``PhienBan`` (version) is the hash of the payload's canonical form, so the same content always
gets the same version and the portal can answer a resend as a duplicate: it is the idempotency
key of one version of one dossier.

Records are sealed a batch at a time, as X-Road's security server does when signing is the slow
part: the canonical records of a batch (``PhienBan`` included, so the version cannot be swapped)
are the leaves of an RFC 6962 hash tree, and one detached JWS (``ChuKySo``, the same in every
record of the batch) signs the tree's head. ``BangChung`` (proof) is the record's position and
audit path, so each record is still verified on its own, without the rest of its batch: fold the
path from the record's leaf to the root, then check the JWS over the head that root makes. A
million records then cost a few thousand signatures and verifications instead of a million each.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Sequence

from cryptography import x509

from lienthong.signing import merkle
from lienthong.signing.canonical import canonical_json, content_hash
from lienthong.signing.jws import VERSION_MISMATCH, SignatureError, Signer, verify_detached
from lienthong.signing.trust import TrustStore

VERSION = "PhienBan"
PROOF = "BangChung"
SIGNATURE = "ChuKySo"
MAX_PATH = 64  # a tree of 2**64 records: any longer path is not a proof
_HASH = re.compile(r"[0-9a-f]{64}")


def _without(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in fields}


def version_of(payload: dict[str, Any]) -> str:
    """The content version of a payload; seal fields already present are not part of it."""
    return content_hash(_without(payload, VERSION, PROOF, SIGNATURE))


def tree_head(root: bytes, size: int) -> bytes:
    """What the batch signature signs: the same shape as a run manifest's ``tree``."""
    return canonical_json(merkle.head(root.hex(), size))


def seal_batch(payloads: Sequence[dict[str, Any]], signer: Signer) -> list[dict[str, Any]]:
    """Each payload with its version, its proof and the batch's one signature, in the given order;
    re-sealing sealed records replaces all three."""
    versioned = [{**_without(p, VERSION, PROOF, SIGNATURE), VERSION: version_of(p)} for p in payloads]
    if not versioned:
        return []
    tree = merkle.Tree(merkle.leaf_hash(canonical_json(record)) for record in versioned)
    signature = signer.sign(tree_head(tree.root, tree.size))
    return [{**record, PROOF: {"index": i, "size": tree.size, "path": [h.hex() for h in tree.proof(i)]},
             SIGNATURE: signature} for i, record in enumerate(versioned)]


def seal(payload: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """One record sealed alone: a batch of one, whose tree is its leaf and whose path is empty."""
    return seal_batch([payload], signer)[0]


class Unsealer:
    """Verifies records one at a time, checking each batch signature once.

    The records of a batch carry the same signature over the same head; once that pair has
    verified at ``at``, the next record of the batch costs its leaf hash and a few node hashes.
    Nothing else is remembered: a record whose proof leads to another root is checked in full
    and refused.
    """

    def __init__(self, trust: TrustStore, at: dt.datetime | None = None) -> None:
        self.trust = trust
        self.at = at or dt.datetime.now(dt.timezone.utc)
        self._verified: dict[tuple[str, bytes], x509.Certificate] = {}

    def __call__(self, record: dict[str, Any]) -> tuple[dict[str, Any], x509.Certificate]:
        """The payload (without seal fields) and the signer's certificate, or :class:`SignatureError`.

        The signature is checked first: a version that does not match a correctly signed record is
        the signer's own mistake (``version_mismatch``), not tampering on the way.
        """
        signature = record.get(SIGNATURE)
        if not isinstance(signature, str):
            raise SignatureError(f"malformed: the record has no {SIGNATURE}")
        signed = _without(record, PROOF, SIGNATURE)
        index, size, path = _proof(record.get(PROOF))
        root = merkle.root_from_inclusion(merkle.leaf_hash(canonical_json(signed)), index, size, path)
        if root is None:
            raise SignatureError(f"malformed: the {PROOF} path does not fit leaf {index} of a tree of {size}")
        head = tree_head(root, size)
        cert = self._verified.get((signature, head))
        if cert is None:
            cert = self._verified[signature, head] = verify_detached(signature, head, self.trust, self.at)
        if signed.get(VERSION) != version_of(signed):
            raise SignatureError(f"version mismatch: {VERSION} is not the hash of the record's content",
                                 VERSION_MISMATCH)
        return _without(signed, VERSION), cert


def unseal(
    record: dict[str, Any], trust: TrustStore, at: dt.datetime | None = None
) -> tuple[dict[str, Any], x509.Certificate]:
    """One record checked on its own (see :class:`Unsealer`)."""
    return Unsealer(trust, at)(record)


def _proof(proof: Any) -> tuple[int, int, list[bytes]]:
    """(index, size, path) of a ``BangChung``, read strictly: one encoding per proof."""
    if not isinstance(proof, dict) or set(proof) != {"index", "size", "path"}:
        raise SignatureError(f"malformed: {PROOF} must hold index, size and path, nothing else")
    index, size, path = proof["index"], proof["size"], proof["path"]
    if type(index) is not int or type(size) is not int or not 0 <= index < size:
        raise SignatureError(f"malformed: the {PROOF} index must be a whole number below its size")
    if (not isinstance(path, list) or len(path) > MAX_PATH
            or not all(isinstance(h, str) and _HASH.fullmatch(h) for h in path)):
        raise SignatureError(f"malformed: the {PROOF} path must list at most {MAX_PATH} "
                             "SHA-256 hashes in lowercase hex")
    return index, size, [bytes.fromhex(h) for h in path]
