"""RFC 3161's TimeStampResp as the RFC defines it, for the sandbox TSA and the ledger's client.

asn1crypto's ``tsp.TimeStampResp`` makes ``timeStampToken`` mandatory, so it can neither build
nor read a refusal (status ``rejection`` and no token); this is the same type with the token
OPTIONAL, as in RFC 3161 section 2.4.2.
"""

from __future__ import annotations

from asn1crypto import cms, core, tsp


class TimeStampResp(core.Sequence):
    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]
