"""The population database stand-in and its enricher, over real HTTP, SOAP 1.1 and 1.2, with zeep."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import multiprocessing
import threading
import time
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest
import requests
import zeep
from lxml import etree

from lienthong.connectors import soap
from lienthong.connectors.pacing import Pacer
from lienthong.connectors.soap import BatchCall, PopulationVerifier, Subject, Verification, is_transient
from lienthong.sandbox.faults import FaultConfig
from lienthong.sandbox.http import ServerThread, free_port
from lienthong.sandbox.population import NS, Citizen, PopulationRegistry, create_app
from lienthong.sandbox.soap_server import SOAP11, SOAP12

AN = Citizen("001090000001", "Nguyễn Văn An", dt.date(1990, 1, 2), "M")
BINH = Citizen("079195000002", "Trần Thị Bình", dt.date(1995, 5, 6), "F")
UNKNOWN_ID = "001090999999"
FAST = {"backoff": 0.01, "max_backoff": 0.1}


def crowd(count: int, offset: int = 0) -> list[Citizen]:
    return [Citizen(f"0010{90 + i % 10:02d}{offset + i:06d}", f"Lê Văn Số {offset + i}",
                    dt.date(1990 + i % 10, 1 + i % 12, 1 + i % 28), "M") for i in range(count)]


def subject(c: Citizen, **changes: Any) -> Subject:
    values = {"personal_id": c.personal_id, "full_name": c.full_name, "date_of_birth": c.date_of_birth,
              "gender": c.gender}
    return Subject(**{**values, **changes})


class Probe:
    """Outermost middleware: what the server saw, including requests the fault switch failed."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.posts: list[tuple[str, int, bytes]] = []  # content type, status, body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        status: list[int] = []

        def recording(code: str, headers: list, exc_info: Any = None) -> Any:
            status.append(int(code.split()[0]))
            return start_response(code, headers, exc_info)

        try:
            body = b"".join(self.app(environ, recording))
        finally:
            with self.lock:
                self.in_flight -= 1
        with self.lock:
            self.posts.append((environ.get("CONTENT_TYPE", ""), status[0], body))
        return [body]

    def statuses(self) -> list[int]:
        return [status for _, status, _ in self.posts]


@contextmanager
def serve(db: Path, **options: Any) -> Iterator[tuple[ServerThread, Probe]]:
    probe = Probe(create_app(db, **options))
    with ServerThread(probe) as server:
        yield server, probe


def wsdl(server: ServerThread) -> str:
    return f"{server.url}/population?wsdl"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("population") / "population.db"
    registry = PopulationRegistry(path)
    registry.add_citizens([AN, BINH, *crowd(1200)])
    registry.close()
    return path


@pytest.fixture(scope="module")
def shared(db: Path) -> Iterator[tuple[ServerThread, Probe]]:
    with serve(db) as running:
        yield running


@pytest.fixture()
def verifier(shared: tuple[ServerThread, Probe]) -> Iterator[PopulationVerifier]:
    v = PopulationVerifier(wsdl(shared[0]), **FAST)
    yield v
    v.close()


# --- the answers ------------------------------------------------------------------------------

def test_match_tolerates_case_spacing_unicode_form_and_iso_strings(verifier: PopulationVerifier) -> None:
    decomposed = unicodedata.normalize("NFD", "NGUYỄN  văn   AN")
    results = verifier.verify([subject(AN), subject(AN, full_name=decomposed),
                               subject(BINH, date_of_birth="1995-05-06"),
                               subject(BINH, date_of_birth=dt.datetime(1995, 5, 6, 0, 0))])
    assert [r.status for r in results] == ["match"] * 4
    assert all(r.fields == () for r in results)


@pytest.mark.parametrize("changes, fields", [
    ({"full_name": "Nguyễn Văn Anh"}, ("full_name",)),
    ({"date_of_birth": dt.date(1990, 1, 3)}, ("date_of_birth",)),
    ({"gender": "F"}, ("gender",)),
    ({"full_name": "Nguyen Van An", "date_of_birth": "1991-01-02", "gender": "F"},
     ("full_name", "date_of_birth", "gender")),
])
def test_mismatch_names_each_field(verifier: PopulationVerifier, changes: dict[str, Any],
                                   fields: tuple[str, ...]) -> None:
    [result] = verifier.verify([subject(AN, **changes)])
    assert result.status == "mismatch"
    assert result.fields == fields
    assert AN.full_name not in result.detail and AN.personal_id not in result.detail


def test_not_found(verifier: PopulationVerifier) -> None:
    [result] = verifier.verify([subject(AN, personal_id=UNKNOWN_ID)])
    assert result == Verification("not_found", (), result.detail)


def test_malformed_id_is_answered_invalid_by_the_service(verifier: PopulationVerifier,
                                                         shared: tuple[ServerThread, Probe]) -> None:
    before = len(shared[1].posts)
    results = verifier.verify([subject(AN, personal_id="00109000001"), subject(AN, personal_id="00109000000A")])
    assert [r.status for r in results] == ["invalid", "invalid"]
    assert "SoDinhDanh" in results[0].detail and "00109000001" not in results[0].detail
    assert len(shared[1].posts) == before + 1


def test_incomplete_subjects_are_invalid_without_a_call(verifier: PopulationVerifier,
                                                        shared: tuple[ServerThread, Probe]) -> None:
    before = len(shared[1].posts)
    results = verifier.verify([Subject(), subject(AN, full_name="  "), subject(AN, date_of_birth="02/01/1990"),
                               subject(AN, gender="X"), subject(AN, date_of_birth=None)])
    assert [r.status for r in results] == ["invalid"] * 5
    assert "missing personal_id, full_name, date_of_birth, gender" == results[0].detail
    assert len(shared[1].posts) == before


def test_batches_keep_order_and_ask_each_distinct_subject_once(db: Path) -> None:
    people = crowd(230)
    subjects = [subject(c) for c in people[:200]]
    subjects += [subject(c, personal_id=f"0020{90 + i % 10:02d}{i:06d}") for i, c in enumerate(people[200:215])]
    subjects += [subject(c, gender="F") for c in people[215:230]]
    expected = ["match"] * 200 + ["not_found"] * 15 + ["mismatch"] * 15
    for i in range(20):  # 20 repeats scattered through the list: 250 subjects, 230 distinct
        position = 7 + i * 12
        subjects.insert(position, subjects[i * 11])
        expected.insert(position, expected[i * 11])
    assert len(subjects) == 250
    with serve(db) as (server, probe):
        v = PopulationVerifier(wsdl(server), concurrency=3, **FAST)
        results = v.verify(subjects)
        assert [r.status for r in results] == expected
        assert len(probe.posts) == 3
        sizes = sorted(body.count(b"<p:MaYeuCau") for _, _, body in probe.posts)  # one per answer
        assert sizes == [30, 100, 100]
        assert v.verify(subjects[::-1]) == results[::-1]
        assert len(probe.posts) == 3, "answers are remembered"


def test_never_more_calls_in_flight_than_the_concurrency(db: Path) -> None:
    with serve(db, latency_ms=60) as (server, probe):
        v = PopulationVerifier(wsdl(server), concurrency=2, batch_size=50, **FAST)
        results = v.verify([subject(c) for c in crowd(400)])
    assert all(r.status == "match" for r in results)
    assert len(probe.posts) == 8
    assert probe.peak == 2


def test_callers_verifying_at_once_share_the_concurrency(db: Path) -> None:
    """The verify stage asks about two parts at once: their calls still queue for the same slots."""
    people = [subject(c) for c in crowd(400)]
    with serve(db, latency_ms=60) as (server, probe), \
            closing(PopulationVerifier(wsdl(server), concurrency=2, batch_size=50, **FAST)) as v, \
            ThreadPoolExecutor(max_workers=3) as callers:
        answers = list(callers.map(v.verify, [people[:150], people[150:300], people[300:]]))
    assert [r.status for part in answers for r in part] == ["match"] * 400
    assert len(probe.posts) == 8  # 3, 3 and 2 batches of at most 50
    assert probe.peak == 2


# --- a bad day ----------------------------------------------------------------------------------

def test_injected_errors_are_retried_until_every_answer_is_right(db: Path) -> None:
    people = crowd(1000)
    with serve(db, faults=FaultConfig(error_rate=0.3)) as (server, probe):
        v = PopulationVerifier(wsdl(server), concurrency=4, batch_size=50, max_attempts=12, **FAST)
        results = v.verify([subject(c) for c in people[:900]] + [subject(c, gender="F") for c in people[900:]])
    assert [r.status for r in results] == ["match"] * 900 + ["mismatch"] * 100
    assert 503 in probe.statuses(), "some calls were failed on purpose"
    assert probe.statuses().count(200) == 20


def test_a_rate_limit_keeps_calls_within_the_service_quota(db: Path) -> None:
    """40 calls against a quota of 20 a second: unpaced, four threads run into it (a batch whose
    retries all ran into it is left unavailable, never answered wrong); paced at 15 a second
    (retries included, with room for a loaded machine's jitter), none is turned away and the calls
    take the time the pace allows."""
    subjects = [subject(c) for c in crowd(400)]
    with serve(db, faults=FaultConfig(quota_per_s=20)) as (server, probe):
        unpaced = PopulationVerifier(wsdl(server), concurrency=4, batch_size=10, **FAST)
        assert {r.status for r in unpaced.verify(subjects)} <= {"match", "unavailable"}
        assert 429 in probe.statuses(), "unpaced calls went over the quota"
    with serve(db, faults=FaultConfig(quota_per_s=20)) as (server, probe):
        paced = PopulationVerifier(wsdl(server), concurrency=4, batch_size=10, pacer=Pacer(15), **FAST)
        paced.check()  # the service description is fetched before the clock starts
        start = time.monotonic()
        results = paced.verify(subjects)
        elapsed = time.monotonic() - start
    assert all(r.status == "match" for r in results)
    assert probe.statuses().count(200) == 40 and 429 not in probe.statuses()
    assert elapsed >= 39 / 15


def test_loading_the_service_description_takes_its_slots_as_calls_do(db: Path) -> None:
    """The service counts requests, the WSDL's GET among them: the connection test's load, the
    verifier's own load and its one call are three requests at four a second, so the third waits
    two intervals (unpaced, both loads went at once, one over the pace each time a task began)."""
    with serve(db) as (server, probe):
        paced = PopulationVerifier(wsdl(server), batch_size=10, pacer=Pacer(4), **FAST)
        start = time.monotonic()
        paced.check()
        results = paced.verify([subject(c) for c in crowd(10)])
        elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["match"] * 10
    assert probe.statuses() == [200]
    assert elapsed >= 2 / 4


# Calls a second for the deployment, against the service's 20; calls each process makes. The margin
# is wide because the server stamps a request when its thread gets to it: on a loaded machine the
# test process is starved, takes in requests that waited in a bunch, and counted 21 in a second at 15.
SHARED_PER_S, SHARED_CALLS = 12, 15
# (the second process asks crowd(..., offset=420): 420 keeps the birth dates crowd() registered)


def paced_worker(conn_id: str, offset: int, ready: Any, go: Any, answers: Any) -> None:
    """One worker of a deployment, in a process of its own: a verifier built from the connection,
    as a verify task builds it, that notes when each of its calls was booked and let go."""
    verifier = PopulationVerifier.from_connection(conn_id)
    verifier.check()  # the WSDL loaded, the imports done: the clock starts with the calls
    booked: list[tuple[float, float]] = []
    released: list[float] = []
    take, wait = verifier.pacer.slots.take, verifier.pacer.wait

    def book(interval: float) -> float:
        sent = time.time()
        delay = take(interval)
        # The database read its clock (this machine's) while the booking ran: the slot's start lies
        # between the booking's going out and its answer, each moved on by the wait it answered.
        booked.append((sent + delay, time.time() + delay))
        return delay

    def release() -> None:
        wait()
        released.append(time.time())

    verifier.pacer.slots.take, verifier.pacer.wait = book, release  # type: ignore[method-assign]
    ready.set()
    go.wait(30)
    results = verifier.verify([subject(c) for c in crowd(10 * SHARED_CALLS, offset=offset)])
    answers.put(([r.status for r in results], booked, released))


def test_processes_sharing_the_state_database_keep_one_quota_between_them(
        db: Path, state_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, each with the connection's ``rate_limit``, against a service whose quota is
    above it: together they keep it, as one client would (none turned away; the slots they
    booked one interval apart on one timetable; no call let go before its slot; the whole taking
    the time the quota allows), where each pacing alone would send twice the quota. When a call is
    let go after its slot is up to the machine: a sleeper woken late (tens of milliseconds on a
    loaded 2-core machine, its process's other threads parsing answers) goes out late, never early."""
    conn_id = f"population_{uuid.uuid4().hex[:8]}"
    spawn = multiprocessing.get_context("spawn")
    ready, go, answers = [spawn.Event(), spawn.Event()], spawn.Event(), spawn.Queue()
    with serve(db, faults=FaultConfig(quota_per_s=20)) as (server, probe):
        monkeypatch.setenv("LIENTHONG_STATE_DB", state_db_url)
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http",
            "extra": {"batch_size": 10, "rate_limit": SHARED_PER_S}}))
        workers = [spawn.Process(target=paced_worker, args=(conn_id, 420 * i, ready[i], go, answers))
                   for i in range(2)]
        for w in workers:
            w.start()
        assert all(r.wait(60) for r in ready), "both workers loaded the service description"
        started = time.time()
        go.set()
        done = [answers.get(timeout=30) for _ in workers]
        for w in workers:
            w.join(10)
    statuses = [s for answer in done for s in answer[0]]
    booked = [slot for answer in done for slot in answer[1]]
    released = sorted(t for answer in done for t in answer[2])
    interval, calls = 1 / SHARED_PER_S, 2 * SHARED_CALLS
    assert statuses == ["match"] * 10 * calls
    assert probe.statuses().count(200) == calls and 429 not in probe.statuses()
    # One timetable: any two slots, each known only within its booking's round trip (tens of
    # milliseconds on a loaded machine), can lie an interval apart; SQLite's clock counts whole
    # milliseconds. Two timetables would put the workers' slots together.
    assert all(max(b_last - a_first, a_last - b_first) >= interval - 0.002
               for (a_first, a_last), (b_first, b_last) in itertools.combinations(booked, 2))
    latest = sorted(last for _, last in booked)
    assert all(r >= b for b, r in zip(latest, released)), "no call goes before its slot"
    assert released[-1] - started >= (calls - 1) * interval


def test_busy_fault_is_transient(db: Path) -> None:
    with serve(db, max_concurrent=1, latency_ms=40) as (server, probe):
        v = PopulationVerifier(wsdl(server), concurrency=4, max_attempts=15, **FAST)
        results = v.verify([subject(c) for c in crowd(400)])
    assert all(r.status == "match" for r in results)
    busy = [body for _, status, body in probe.posts if status == 503]
    assert busy, "the service turned calls away"
    fault = etree.fromstring(busy[0])
    assert fault.findtext(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault/faultcode") == "soap:Server.Busy"
    assert fault.findtext(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault/faultstring").startswith("Busy")


def test_busy_is_a_transient_fault_in_both_soap_versions(db: Path) -> None:
    with serve(db, max_concurrent=0) as (server, probe):
        client = zeep.Client(wsdl(server))
        faults = []
        for port in ("XacThucCongDanSoap11", "XacThucCongDanSoap12"):
            with pytest.raises(zeep.exceptions.Fault) as raised:
                client.bind("XacThucCongDanService", port).XacThucCongDan(
                    SoDinhDanh=AN.personal_id, HoVaTen=AN.full_name, NgaySinh=AN.date_of_birth, GioiTinh="M")
            faults.append(raised.value)
    assert probe.statuses() == [503, 503]
    assert (faults[0].code, faults[1].code) == ("soap:Server.Busy", "soap:Receiver")
    assert [q.localname for q in faults[1].subcodes] == ["Busy"]
    assert all(is_transient(f) for f in faults)
    assert not is_transient(zeep.exceptions.Fault("no such operation", code="soap:Client"))


def test_a_service_that_is_down_leaves_every_subject_unavailable_in_bounded_time() -> None:
    v = PopulationVerifier(f"http://127.0.0.1:{free_port()}/population?wsdl", timeout=2, max_attempts=3, **FAST)
    started = time.monotonic()
    results = v.verify([subject(AN), subject(BINH), Subject(personal_id=AN.personal_id)])
    assert time.monotonic() - started < 5
    assert [r.status for r in results] == ["unavailable", "unavailable", "invalid"]
    assert "ConnectionError" in results[0].detail


def test_a_service_failing_every_call_leaves_its_batches_unavailable_then_recovers(db: Path) -> None:
    people = crowd(150)
    with serve(db) as (server, probe):
        v = PopulationVerifier(wsdl(server), max_attempts=3, **FAST)
        assert v.verify([subject(AN)])[0].status == "match"  # the WSDL is loaded
        requests.put(f"{server.url}/_sandbox/faults", json={"error_rate": 1.0}).raise_for_status()
        started = time.monotonic()
        results = v.verify([subject(c) for c in people])
        assert time.monotonic() - started < 5
        assert {r.status for r in results} == {"unavailable"}
        assert "HTTP 503" in results[0].detail
        assert probe.statuses().count(503) == 2 * 3, "two batches, three attempts each"
        requests.put(f"{server.url}/_sandbox/faults", json={"error_rate": 0.0}).raise_for_status()
        assert {r.status for r in v.verify([subject(c) for c in people])} == {"match"}, "not remembered"


# --- the protocol -------------------------------------------------------------------------------

def test_the_soap_12_port_answers_too(shared: tuple[ServerThread, Probe]) -> None:
    server, probe = shared
    client = zeep.Client(wsdl(server))
    port = client.bind("XacThucCongDanService", "XacThucCongDanSoap12")
    answer = port.XacThucCongDan(SoDinhDanh=BINH.personal_id, HoVaTen="trần thị bình",
                                 NgaySinh=BINH.date_of_birth, GioiTinh="F")
    assert (answer.MaKetQua, answer.TruongSaiLech) == ("KHOP", [])
    assert probe.posts[-1][0].startswith("application/soap+xml")
    batch = port.XacThucDanhSachCongDan(CongDan=[
        {"MaYeuCau": "a", "SoDinhDanh": AN.personal_id, "HoVaTen": AN.full_name, "NgaySinh": AN.date_of_birth,
         "GioiTinh": "F"},
        {"MaYeuCau": "b", "SoDinhDanh": UNKNOWN_ID, "HoVaTen": "X", "NgaySinh": AN.date_of_birth, "GioiTinh": "M"},
    ])
    assert [(r.MaYeuCau, r.MaKetQua, r.TruongSaiLech) for r in batch] == [
        ("a", "KHONG_KHOP", ["GioiTinh"]), ("b", "KHONG_TIM_THAY", [])]
    single = client.service.XacThucCongDan(SoDinhDanh=AN.personal_id, HoVaTen=AN.full_name,
                                           NgaySinh=AN.date_of_birth, GioiTinh="M")
    assert single.MaKetQua == "KHOP" and probe.posts[-1][0].startswith("text/xml")


def test_a_batch_call_sends_the_bytes_zeep_renders_and_reads_the_answer_through_zeep(
        shared: tuple[ServerThread, Probe]) -> None:
    server, probe = shared
    client = zeep.Client(wsdl(server))
    people = [AN, BINH, Citizen(UNKNOWN_ID, "Đặng Thị Ánh & <Hà>", dt.date(2001, 12, 31), "F")]
    items = [{"MaYeuCau": str(i), "SoDinhDanh": c.personal_id, "HoVaTen": c.full_name, "NgaySinh": c.date_of_birth,
              "GioiTinh": c.gender} for i, c in enumerate(people)]
    call = BatchCall(client, "XacThucDanhSachCongDan", "CongDan")
    ours, our_headers = call.envelope(items)
    theirs, their_headers = client.service._binding._create(
        "XacThucDanhSachCongDan", (), {"CongDan": items}, client=client, options=client.service._binding_options)
    assert etree.tostring(ours) == etree.tostring(theirs) and our_headers == their_headers
    answers = call(items)
    assert [(a["MaYeuCau"], a["MaKetQua"]) for a in answers] == [("0", "KHOP"), ("1", "KHOP"), ("2", "KHONG_TIM_THAY")]
    assert probe.posts[-1][1] == 200
    with pytest.raises(zeep.exceptions.Error, match="has no XacThucDanhSachCongDan that takes a list of Nguoi"):
        BatchCall(client, "XacThucDanhSachCongDan", "Nguoi")


def _answer(*items: str, soap: str = SOAP11) -> bytes:
    return (f'<e:Envelope xmlns:e="{soap}"><e:Body><p:XacThucDanhSachCongDanResponse xmlns:p="{NS}">'
            + "".join(items) + "</p:XacThucDanhSachCongDanResponse></e:Body></e:Envelope>").encode()


PLAIN = ["<p:KetQua><p:MaYeuCau>0</p:MaYeuCau><p:MaKetQua>KHOP</p:MaKetQua><p:MoTa>khớp</p:MoTa></p:KetQua>",
         "<p:KetQua>\n <p:MaYeuCau>1</p:MaYeuCau> <p:MaKetQua>KHONG_KHOP</p:MaKetQua>"
         "<p:TruongSaiLech>HoVaTen</p:TruongSaiLech><p:TruongSaiLech>GioiTinh</p:TruongSaiLech>"
         "<p:MoTa> a &amp; b </p:MoTa></p:KetQua>",
         "<p:KetQua><p:MaKetQua>KHONG_TIM_THAY</p:MaKetQua><p:MoTa></p:MoTa></p:KetQua>"]


@pytest.mark.parametrize("answer, plain", [
    (_answer(*PLAIN), True),
    (_answer(), True),
    (_answer(*PLAIN[:1], "<p:KetQua><p:MaKetQua>KHOP</p:MaKetQua></p:KetQua>"), False),  # MoTa missing
    (_answer(*PLAIN[:1], '<p:KetQua><p:MaKetQua x="1">KHOP</p:MaKetQua><p:MoTa/></p:KetQua>'), False),
    (_answer("<p:KetQua><p:MaKetQua>KHOP</p:MaKetQua><!-- c -->"
             "<p:MoTa>m</p:MoTa></p:KetQua>"), True),  # parser drops it
    (_answer("<p:KetQua><p:MoTa>m</p:MoTa><p:MaKetQua>KHOP</p:MaKetQua></p:KetQua>"), False),  # out of order
    (_answer("<p:KetQua><p:MaKetQua>KHOP</p:MaKetQua><p:MoTa>m</p:MoTa><p:X/></p:KetQua>"), False),
    (_answer("<p:KetQua><p:MaKetQua><p:MoTa>m</p:MoTa></p:MaKetQua><p:MoTa>m</p:MoTa></p:KetQua>"), False),
    (_answer(PLAIN[0], soap=SOAP12), False),
])
def test_a_plain_answer_is_read_as_zeep_reads_it_and_any_other_left_to_zeep(
        shared: tuple[ServerThread, Probe], answer: bytes, plain: bool) -> None:
    server, _ = shared
    client = zeep.Client(wsdl(server))
    call = BatchCall(client, "XacThucDanhSachCongDan", "CongDan")
    envelope = zeep.loader.parse_xml(answer, client.transport, settings=client.settings)
    ours = call.answer(envelope)
    assert (ours is not None) == plain
    if plain:
        assert ours == zeep.helpers.serialize_object(call.operation.process_reply(envelope), dict)


def test_an_answer_zeep_reads_is_judged_as_a_plain_one(shared: tuple[ServerThread, Probe]) -> None:
    """Items read by zeep (here, for an attribute the plain reader leaves to it) are its value
    objects, not dicts; a verification reads either the same way."""
    server, _ = shared
    client = zeep.Client(wsdl(server))
    call = BatchCall(client, "XacThucDanhSachCongDan", "CongDan")
    mismatch = ('<p:KetQua><p:MaYeuCau>1</p:MaYeuCau><p:MaKetQua x="1">KHONG_KHOP</p:MaKetQua>'
                "<p:TruongSaiLech>HoVaTen</p:TruongSaiLech><p:MoTa>m</p:MoTa></p:KetQua>")
    envelope = zeep.loader.parse_xml(_answer(PLAIN[0], mismatch), client.transport, settings=client.settings)
    assert call.answer(envelope) is None
    read = call.reply.process_reply(envelope)
    assert not isinstance(read[0], dict)
    assert [soap._verification(item) for item in read] == [
        Verification("match", (), "khớp"), Verification("mismatch", ("full_name",), "m")]


def test_the_wsdl_points_at_the_address_it_was_fetched_from(shared: tuple[ServerThread, Probe]) -> None:
    server, _ = shared
    for query in ("wsdl", "WSDL"):
        response = requests.get(f"{server.url}/population?{query}")
        assert response.status_code == 200
        root = etree.fromstring(response.content)
        locations = [a.get("location") for a in root.iter("{*}address")]
        assert locations == [f"{server.url}/population"] * 2
        assert root.get("targetNamespace") == NS


def test_from_connection_reads_the_airflow_connection(shared: tuple[ServerThread, Probe], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = shared
    monkeypatch.setenv("LIENTHONG_STATE_DB", f"sqlite:///{tmp_path / 'state.db'}")  # the rate limit's slots
    monkeypatch.setenv("AIRFLOW_CONN_LIENTHONG_POPULATION", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http",
        "extra": {"path": "/population", "concurrency": 3, "batch_size": 40, "timeout": 5, "rate_limit": 50,
                  "cache_size": 1000}}))
    v = PopulationVerifier.from_connection()
    assert (v.wsdl_url, v.concurrency, v.batch_size, v.timeout) == (wsdl(server), 3, 40, 5.0)
    assert v.remembered.size == 1000
    assert v.pacer.interval == 1 / 50
    assert (v.pacer.slots.name, v.pacer.slots.url) == ("lienthong_population", f"sqlite:///{tmp_path / 'state.db'}")
    assert v.check() == ["XacThucCongDan", "XacThucDanhSachCongDan"]
    assert v.verify([subject(AN)])[0].status == "match"


def test_logs_carry_counts_not_personal_data(verifier: PopulationVerifier, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        results = verifier.verify([subject(AN, full_name="Nguyễn Văn Anh"), subject(BINH)])
    assert [r.status for r in results] == ["mismatch", "match"]
    assert "verified 2 subjects" in caplog.text
    for value in (AN.personal_id, "Nguyễn Văn Anh", BINH.full_name, "1995-05-06"):
        assert value not in caplog.text


# --- hostile and malformed requests ----------------------------------------------------------

def envelope(body: str, env: str = SOAP11, prolog: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>{prolog}<e:Envelope xmlns:e="{env}" xmlns:p="{NS}">'
            f"<e:Body>{body}</e:Body></e:Envelope>").encode()


def fields(personal_id: str = AN.personal_id) -> str:
    return (f"<p:SoDinhDanh>{personal_id}</p:SoDinhDanh><p:HoVaTen>{AN.full_name}</p:HoVaTen>"
            f"<p:NgaySinh>1990-01-02</p:NgaySinh><p:GioiTinh>M</p:GioiTinh>")


def single(personal_id: str = AN.personal_id) -> str:
    return f"<p:XacThucCongDan>{fields(personal_id)}</p:XacThucCongDan>"


LAUGHS = ('<!DOCTYPE e:Envelope [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
          + "]>")
HOSTILE = {
    "billion laughs": envelope(single("&lol9;"), prolog=LAUGHS),
    "external entity": envelope(single("&xxe;"), prolog='<!DOCTYPE e:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'),
    "external DTD": envelope(single(), prolog='<!DOCTYPE e:Envelope SYSTEM "http://127.0.0.1:9/evil.dtd">'),
    "bare DOCTYPE": envelope(single(), prolog="<!DOCTYPE e:Envelope>"),
}


def post(server: ServerThread, data: bytes, soap12: bool = False, action: str | None = f"{NS}#XacThucCongDan",
         ) -> requests.Response:
    headers = {"Content-Type": "application/soap+xml; charset=utf-8"} if soap12 else {
        "Content-Type": "text/xml; charset=utf-8", **({"SOAPAction": f'"{action}"'} if action is not None else {})}
    return requests.post(f"{server.url}/population", data=data, headers=headers, timeout=10)


def soap11_fault(response: requests.Response) -> tuple[str | None, str]:
    root = etree.fromstring(response.content)
    fault = root.find(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault")
    assert fault is not None, response.text
    return fault.findtext("faultcode"), fault.findtext("faultstring") or ""


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_hostile_xml_is_refused_without_expansion(shared: tuple[ServerThread, Probe], attack: str) -> None:
    server, _ = shared
    started = time.monotonic()
    response = post(server, HOSTILE[attack])
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    assert soap11_fault(response) == ("soap:Client", "DTDs and entity declarations are not allowed")
    assert len(response.content) < 1000 and b"lollol" not in response.content and b"root:" not in response.content


def test_hostile_xml_over_soap_12_gets_a_sender_fault(shared: tuple[ServerThread, Probe]) -> None:
    response = post(shared[0], envelope(single("&lol9;"), env=SOAP12, prolog=LAUGHS), soap12=True)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/soap+xml")
    fault = etree.fromstring(response.content).find(f"{{{SOAP12}}}Body/{{{SOAP12}}}Fault")
    assert fault.findtext(f"{{{SOAP12}}}Code/{{{SOAP12}}}Value") == "soap:Sender"
    assert "DTD" in fault.findtext(f"{{{SOAP12}}}Reason/{{{SOAP12}}}Text")


@pytest.mark.parametrize("data, action, reason", [
    (envelope(single().replace("<p:XacThucCongDan>", '<p:XacThucCongDan xmlns:p="urn:other">')),
     f"{NS}#XacThucCongDan", "unknown operation"),
    (envelope(f'<p:XoaCongDan xmlns:p="{NS}"/>'), "", "unknown operation"),
    (envelope(single()), None, "SOAPAction"),
    (envelope(single()), f"{NS}#XacThucDanhSachCongDan", "SOAP action does not match"),
    (envelope(single(), env=SOAP12), f"{NS}#XacThucCongDan", "envelope version"),
    (b"<not-xml", "", "malformed XML"),
    (envelope("<p:XacThucDanhSachCongDan>" + "".join(
        f"<p:CongDan><p:MaYeuCau>{i}</p:MaYeuCau>{fields()}</p:CongDan>" for i in range(101))
        + "</p:XacThucDanhSachCongDan>"), "", "at most 100"),
    (envelope(single() + " " * (2 * 1024 * 1024)), "", "over 2097152 bytes"),
])
def test_bad_requests_get_client_faults(shared: tuple[ServerThread, Probe], data: bytes, action: str | None,
                                        reason: str) -> None:
    response = post(shared[0], data, action=action)
    assert response.status_code == 500
    code, text = soap11_fault(response)
    assert code in ("soap:Client", "soap:VersionMismatch") and reason in text


def test_registry_upserts_many_citizens_quickly(tmp_path: Path) -> None:
    registry = PopulationRegistry(tmp_path / "big.db")
    started = time.monotonic()
    assert registry.add_citizens(crowd(100_000)) == 100_000
    assert time.monotonic() - started < 5
    renamed = Citizen(crowd(1)[0].personal_id, "Lê Văn Mới", dt.date(1990, 1, 1), "M")
    assert registry.add_citizens([renamed]) == 1
    assert registry.count() == 100_000
    assert registry.lookup([renamed.personal_id, UNKNOWN_ID]) == {renamed.personal_id: renamed}
