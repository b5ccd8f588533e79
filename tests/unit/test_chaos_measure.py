"""How the chaos suite reads its clients' records: an outage (writes failed) is told
apart from a stall (every write answered, late), and the fault's gap from the return's."""

from tests.support.chaos import goals, outages


def ok(t: float, d: float = 0.01) -> dict:
    return {"t": t, "d": d, "ok": True}


def failed(t: float, d: float = 0.01) -> dict:
    return {"t": t, "d": d, "ok": False, "error": "HTTPError: HTTP Error 503"}


def steady(start: float, end: float, step: float = 0.025) -> list[dict]:
    n = int(round((end - start) / step))
    return [ok(start + i * step) for i in range(n)]


def result(records: list[dict], fault: float, back: float, end: float) -> dict:
    return {"lost": 0, "two_writers_s": 0.0, **outages(records, fault, back, end)}


def test_failed_writes_after_the_return_are_an_outage():
    # fault at 10 s, writes fail until 12 s; back at 15 s; at 20 s writes fail again for 1.2 s
    records = (steady(0, 10) + [failed(10 + i / 10) for i in range(20)] + steady(12, 20)
               + [failed(20.1 + i / 10) for i in range(11)] + steady(21.2, 30))
    r = result(records, fault=10, back=15, end=30)
    assert 2.0 < r["outage_fault_s"] < 2.1
    assert 1.2 < r["outage_return_s"] < 1.3 and r["outage_return_failed"] == 11
    assert 9.9 < r["outage_return_at_s"] < 10.0  # after the fault
    assert r["stall_return_s"] < 0.15
    assert any("write outage at the return" in m for m in goals(r))


def test_a_slow_write_after_the_return_is_a_stall_not_an_outage():
    # every write answered, but for 1.3 s none was: one request took that long
    records = steady(0, 20) + [ok(20.0, 1.3)] + steady(21.4, 30)
    r = result(records, fault=10, back=15, end=30)
    assert r["outage_return_s"] == 0.0 and r["outage_return_failed"] == 0
    assert 1.3 < r["stall_return_s"] < 1.45
    assert goals(r) == []


def test_a_long_stall_misses_its_goal():
    records = steady(0, 20) + [ok(20.0, 3.5)] + steady(23.6, 30)
    r = result(records, fault=10, back=15, end=30)
    assert [m for m in goals(r) if "stalled at the return" in m]


def test_a_failure_during_a_slow_stretch_makes_it_an_outage():
    # one failed request inside the gap: the client saw an error, so the whole gap is an outage
    records = steady(0, 20) + [failed(20.2, 0.5), ok(20.0, 1.3)] + steady(21.4, 30)
    r = result(records, fault=10, back=15, end=30)
    assert 1.3 < r["outage_return_s"] < 1.45 and r["outage_return_failed"] == 1
    assert r["stall_return_s"] < 0.15


def test_nothing_acknowledged_before_the_fault_is_an_endless_outage():
    records = [failed(i / 10) for i in range(50)] + steady(5, 30)
    r = result(records, fault=0.0, back=15, end=30)
    assert r["outage_fault_s"] == float("inf")
