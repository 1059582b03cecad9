"""What the gate says of a record, apart from how it decides.

The stages that only read verdicts (sign, record) and the tasks before the gate import this, not
:mod:`lienthong.gates.gate`: that one imports pandas (49 MB and 0.15 s a process), which a task
that never judges a record has no use for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, QUARANTINE, PENDING = "pass", "quarantine", "pending"


@dataclass
class Verdict:
    status: str
    reasons: list[dict[str, str]] = field(default_factory=list)
