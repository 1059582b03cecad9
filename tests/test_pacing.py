"""The pacer's slots, in one process and in the state database (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
import uuid

import pytest

from lienthong.connectors.pacing import LocalSlots, Pacer, SharedSlots, Slots

PER_S = 20
INTERVAL = 1 / PER_S
# Clock readings a start is compared with may differ by this much (SQLite's clock reads whole
# milliseconds, float rounding).
CLOCK = 0.002


def starts(pacer: Pacer, calls: int) -> list[float]:
    """When each of ``calls`` paced calls was let go."""
    times = []
    for _ in range(calls):
        pacer.wait()
        times.append(time.monotonic())
    return times


def assert_no_burst_after_a_pause(slots: Slots) -> None:
    """Slots nobody took while the limiter was idle are gone: after a pause the first call goes
    at once and the next ones are spaced again, not sent together to catch up.

    Each call is held to its place in an even timetable from the resumption, not to the gap
    after the call before: a caller the machine's scheduler wakes late (seen: 25 ms, with the
    suite on two cores) makes the gap to the next one short without any slot being early."""
    pacer = Pacer(PER_S, slots)
    starts(pacer, 3)
    time.sleep(10 * INTERVAL)
    resumed = time.monotonic()
    after = starts(pacer, 5)
    assert after[0] - resumed < INTERVAL, "the first call after a pause waits for no one"
    since = [round(start - resumed, 4) for start in after]
    assert all(start >= n * INTERVAL - CLOCK for n, start in enumerate(since)), since


def test_an_idle_local_limiter_does_not_burst_after_a_pause() -> None:
    assert_no_burst_after_a_pause(LocalSlots())


def test_an_idle_shared_limiter_does_not_burst_after_a_pause(state_db_url: str) -> None:
    assert_no_burst_after_a_pause(SharedSlots(state_db_url, f"idle-{uuid.uuid4().hex}"))


def test_shared_slots_are_one_timetable_per_name(state_db_url: str) -> None:
    """Two clients of one name take turns; another name is another quota (its own timetable)."""
    name = f"one-{uuid.uuid4().hex}"
    first, second, other = (SharedSlots(state_db_url, name), SharedSlots(state_db_url, name),
                            SharedSlots(state_db_url, f"other-{uuid.uuid4().hex}"))
    waits = [first.take(1.0), second.take(1.0), first.take(1.0)]
    assert [round(w) for w in waits] == [0, 1, 2], waits
    assert round(other.take(1.0)) == 0


def test_shared_slots_keep_the_databases_time_not_the_callers(
        state_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers' clocks disagree; the timetable does not mind. A worker whose clock is an hour ahead
    takes the next slot like the others: it does not book an hour ahead (holding every other
    worker back for an hour), nor, an hour behind, find the slots free (a burst)."""
    name = f"skew-{uuid.uuid4().hex}"
    honest = SharedSlots(state_db_url, name)
    waits = [honest.take(1.0)]
    real = time.time
    for skew in (3600, -3600):
        with monkeypatch.context() as wrong:
            wrong.setattr(time, "time", lambda skew=skew: real() + skew)
            waits.append(SharedSlots(state_db_url, name).take(1.0))
        waits.append(honest.take(1.0))
    assert [round(w) for w in waits] == [0, 1, 2, 3, 4], waits


def test_no_limit_never_touches_the_store() -> None:
    """A client without a rate limit pays nothing: no database, not even one that cannot be reached."""
    pacer = Pacer(None, SharedSlots("postgresql+psycopg://nobody@127.0.0.1:1/none", "unused"))
    started = time.monotonic()
    for _ in range(100):
        pacer.wait()
    assert time.monotonic() - started < 0.1


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(-1)


def test_on_sqlite_a_booking_waits_out_a_long_write_instead_of_failing(tmp_path) -> None:
    """A settle of a large run holds SQLite's write lock for longer than the driver's 5 s."""
    import sqlite3
    import threading

    db = tmp_path / "state.db"
    slots = SharedSlots(f"sqlite:///{db}", "population")
    Pacer(PER_S, slots).wait()  # the table and the limiter's row exist
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    released = threading.Timer(6, lambda: writer.execute("COMMIT"))
    released.start()
    started = time.monotonic()
    try:
        Pacer(PER_S, slots).wait()
    finally:
        released.join()
        writer.close()
    assert time.monotonic() - started >= 5.5
