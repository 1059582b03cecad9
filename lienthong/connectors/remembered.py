"""Answers a service already gave, kept within a bound so that a run asks about a citizen once.

A backfill asks about a million applicants, and a citizen with several dossiers in different parts
of the run should cost one call. What is kept is most of what the verify stage holds: at a million
records, 200,000 answers as text keys and one answer object each raised the stage's peak from 243
to 367 MB. Here a key is its 32-byte digest and equal answers are one object, since a service gives
few different answers ("match", or the same mismatched fields with the same wording) to many people.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

A = TypeVar("A", bound=Hashable)

# Distinct answers shared at most; past this, answers are kept as they come. An answer may carry the
# service's own text, which a faulty service could make different every time.
SHARED_ANSWERS = 1024


class Remembered(Generic[A]):
    """The ``size`` keys used last, with their answers; safe to use from several threads."""

    def __init__(self, size: int, shared: int = SHARED_ANSWERS) -> None:
        self.size = size
        self._answers: OrderedDict[bytes, A] = OrderedDict()
        self._shared: dict[A, A] = {}
        self._shared_at_most = shared
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: bytes) -> A | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def put(self, key: bytes, answer: A) -> None:
        if self.size <= 0:
            return
        with self._lock:
            shared = self._shared.get(answer)
            if shared is None and len(self._shared) < self._shared_at_most:
                shared = self._shared[answer] = answer
            self._answers[key] = answer if shared is None else shared
            self._answers.move_to_end(key)
            if len(self._answers) > self.size:
                self._answers.popitem(last=False)
