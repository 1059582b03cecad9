"""The population verifier's memory of answers: bounded, the least recently used dropped first
(half the bound at a time), and small."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

from lienthong.connectors.remembered import Remembered
from lienthong.connectors.soap import Verification


def key(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def answer(n: int) -> Verification:
    """New objects each time, its text included, as parsing a call's answer makes them; equal for
    equal ``n % 3``."""
    kind = n % 3
    if kind == 0:
        return Verification("match", (), " ".join(("Thông tin", "khớp")))
    return Verification("mismatch", tuple(["full_name", "gender"][:kind]), " ".join(("Thông tin", "không khớp")))


def test_the_keys_used_last_are_kept_and_the_oldest_go_first() -> None:
    remembered: Remembered[Verification] = Remembered(size=4)
    for n in range(3):
        remembered.put(key(n), answer(n))
    assert remembered.get(key(0)) == answer(0)  # now used more recently than 1 and 2
    remembered.put(key(3), answer(3))
    assert remembered.get(key(1)) is None
    assert [remembered.get(key(n)) for n in (0, 3)] == [answer(0), answer(3)]


def test_at_least_half_the_bound_of_the_keys_used_last_stay_and_never_more_than_the_bound() -> None:
    size = 100
    remembered: Remembered[Verification] = Remembered(size=size)
    rng = random.Random(6)
    used: list[int] = []  # most recent last
    for _ in range(5_000):
        n = rng.randrange(300)
        if remembered.get(key(n)) is None:
            remembered.put(key(n), answer(n))
        used = [m for m in used if m != n] + [n]
        assert len(remembered) <= size
    last = used[-(size // 2):]
    assert [remembered.get(key(n)) for n in last] == [answer(n) for n in last]


def test_a_size_of_zero_remembers_nothing() -> None:
    remembered: Remembered[Verification] = Remembered(size=0)
    remembered.put(key(1), answer(1))
    assert len(remembered) == 0 and remembered.get(key(1)) is None


def test_equal_answers_are_kept_as_one_object_up_to_a_bound() -> None:
    remembered: Remembered[Verification] = Remembered(size=100, shared=2)
    for n in range(6):
        remembered.put(key(n), answer(n))
    assert remembered.get(key(0)) is remembered.get(key(3))
    assert remembered.get(key(1)) is remembered.get(key(4))
    # A third kind of answer is past the bound: kept, each as it came, and still right.
    assert remembered.get(key(2)) == remembered.get(key(5)) == answer(2)
    assert remembered.get(key(2)) is not remembered.get(key(5))


def test_an_answer_remembered_costs_little_memory() -> None:
    """What a backfill's verify stage holds is mostly this: at a million records, 200,000 answers
    kept as text keys with an answer object each raised its peak by about 125 MB, ~600 bytes an
    answer; counted as here, that way took ~420 bytes an answer, and this one takes ~140."""
    count = 20_000
    remembered: Remembered[Verification] = Remembered(size=2 * count)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            remembered.put(key(n), answer(n))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(remembered) == count
    assert held / count < 200, f"{held / count:.0f} bytes an answer"


def test_a_full_memory_taking_new_answers_does_not_grow() -> None:
    """A backfill past the bound drops an answer for each new one, a million times over. Kept in
    one ``OrderedDict``, the dropped keys' dead entries grew its table to three times what it held:
    at the bound of 200,000, 77 MB instead of 39, most of verify's rise of the peak (65 MB) from
    100,000 records to a million."""
    size = 20_000
    remembered: Remembered[Verification] = Remembered(size=size)
    tracemalloc.start()
    try:
        for n in range(size):
            remembered.put(key(n), answer(n))
        filling = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        for n in range(size, 6 * size):
            remembered.put(key(n), answer(n))
        taking = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert taking < 1.2 * filling, f"peak {taking / size:.0f} bytes an answer, {filling / size:.0f} while filling"
