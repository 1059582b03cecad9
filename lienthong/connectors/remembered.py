"""Answers a service already gave, kept within a bound so that a run asks about a citizen once.

A backfill asks about a million applicants, and a citizen with several dossiers in different parts
of the run should cost one call. What is kept is most of what the verify stage holds: at a million
records, 200,000 answers as text keys and one answer object each raised the stage's peak from 243
to 367 MB. Here a key is its 32-byte digest and equal answers are one object, since a service gives
few different answers ("match", or the same mismatched fields with the same wording) to many people.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

A = TypeVar("A", bound=Hashable)

# Distinct answers shared at most; past this, answers are kept as they come. An answer may carry the
# service's own text, which a faulty service could make different every time.
SHARED_ANSWERS = 1024


class Remembered(Generic[A]):
    """At least the ``size // 2`` keys used last, and at most ``size``, with their answers; safe to
    use from several threads.

    Two generations of plain dicts rather than one exact least-recently-used order: a key goes
    into the recent one, a key found in the older one moves to the recent one, and when the recent
    one holds half the bound it becomes the older one and the one before is dropped whole. An
    ``OrderedDict`` dropping its oldest key for each new one fills its table with dead entries and
    grows it to three times what it holds: at the bound of 200,000 it took 77 MB instead of 39, and
    verify's peak rose 65 MB from 100,000 records to a million (24 MB now).
    """

    def __init__(self, size: int, shared: int = SHARED_ANSWERS) -> None:
        self.size = size
        self._generation = max(1, size // 2)
        self._recent: dict[bytes, A] = {}
        self._older: dict[bytes, A] = {}
        self._shared: dict[A, A] = {}
        self._shared_at_most = shared
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._recent) + len(self._older)

    def get(self, key: bytes) -> A | None:
        with self._lock:
            answer = self._recent.get(key)
            if answer is None and (answer := self._older.pop(key, None)) is not None:
                self._keep(key, answer)
            return answer

    def put(self, key: bytes, answer: A) -> None:
        if self.size <= 0:
            return
        with self._lock:
            shared = self._shared.get(answer)
            if shared is None and len(self._shared) < self._shared_at_most:
                shared = self._shared[answer] = answer
            self._older.pop(key, None)
            self._keep(key, answer if shared is None else shared)

    def _keep(self, key: bytes, answer: A) -> None:
        self._recent[key] = answer
        if len(self._recent) >= self._generation:
            self._older, self._recent = self._recent, {}
