"""Records sealed by hand, as a careless or hostile signer would: exactly as given (a wrong
version kept), alone in their batch, with whatever signs the tree head."""

from __future__ import annotations

from typing import Any

from lienthong.signing import merkle
from lienthong.signing.canonical import canonical_json
from lienthong.signing.jws import Signer
from lienthong.signing.records import PROOF, SIGNATURE, tree_head

ALONE = {"index": 0, "size": 1, "path": []}


def head_of_one(record: dict[str, Any]) -> bytes:
    """The head a batch of one signs: the tree's root is the record's own leaf."""
    return tree_head(merkle.leaf_hash(canonical_json(record)), 1)


def sealed_as_given(record: dict[str, Any], signer: Signer) -> dict[str, Any]:
    return {**record, PROOF: ALONE, SIGNATURE: signer.sign(head_of_one(record))}
