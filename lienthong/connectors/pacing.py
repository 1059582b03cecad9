"""Calls started no faster than a service's quota, across the threads of one client.

The population database, like most national services, allots each agency so many calls a
second; going over earns 429s and, kept up, a blocked account. Backoff only reacts once the
quota is hit, so calls (retries included) are spaced to the quota before they are sent. The
spacing is per client object: a deployment with several workers divides the agency's quota
among them (each worker's connection extra ``rate_limit``).
"""

from __future__ import annotations

import threading
import time


class Pacer:
    """At most ``per_s`` starts a second, evenly spaced, no bursts; ``None`` or 0: no limit."""

    def __init__(self, per_s: float | None = None) -> None:
        if per_s is not None and per_s < 0:
            raise ValueError("a rate limit is a number of calls per second, at least 0")
        self.interval = 1 / per_s if per_s else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Blocks until this caller's turn: each caller takes the next free slot."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
