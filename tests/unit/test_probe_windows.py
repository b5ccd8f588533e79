"""How a client's records are cut into failing stretches, to set beside a monitor's incidents."""

from hastack.lab.probe import failure_windows, outage


def ok(t: float) -> dict:
    return {"t": t, "d": 0.01, "ok": True}


def failed(t: float, error: str = "URLError: <urlopen error timed out>") -> dict:
    return {"t": t, "d": 0.01, "ok": False, "error": error}


def steady(start: float, end: float) -> list[dict]:
    return [ok(start + i / 10) for i in range(int(round((end - start) * 10)))]


def test_two_stretches_far_apart_are_two_windows_while_the_outage_spans_both():
    # the load balancer fails over at 10 s (2 s); a database error at 18 s (0.3 s)
    records = (steady(0, 10) + [failed(10 + i / 10) for i in range(20)] + steady(12, 18)
               + [failed(18 + i / 10, "HTTPError: HTTP Error 503 (db)") for i in range(3)] + steady(18.3, 25))
    windows = failure_windows(records, quiet=1.0)
    assert [w["failed"] for w in windows] == [20, 3]
    assert 2.05 < windows[0]["seconds"] < 2.15 and 0.35 < windows[1]["seconds"] < 0.45
    assert windows[0]["errors"] == ["URLError: <urlopen error timed out>"]
    assert windows[1]["errors"] == ["HTTPError: HTTP Error 503"]
    assert outage(records)["outage_s"] > 8  # first failure to the last one's recovery


def test_failures_closer_than_the_monitors_interval_are_one_window():
    records = steady(0, 5) + [failed(5.0), failed(5.1)] + steady(5.2, 5.6) + [failed(5.6)] + steady(5.7, 8)
    [w] = failure_windows(records, quiet=1.0)
    assert w["failed"] == 3 and 0.75 < w["seconds"] < 0.85


def test_a_window_never_followed_by_a_success_is_endless_and_no_failure_is_no_window():
    assert failure_windows(steady(0, 3) + [failed(3.0)], quiet=1.0)[0]["seconds"] == float("inf")
    assert failure_windows(steady(0, 3), quiet=1.0) == []
    assert failure_windows([], quiet=1.0) == []
