"""What the gate says of a record, apart from how it decides.

Every task imports the stages module, which reads verdicts (sign, account, record) but judges
records only in the gate task: it imports this, and :mod:`lienthong.gates.gate` inside that task
alone, since the gate imports pandas (49 MB and 0.15 s a process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, QUARANTINE, PENDING = "pass", "quarantine", "pending"


@dataclass
class Verdict:
    status: str
    reasons: list[dict[str, str]] = field(default_factory=list)
