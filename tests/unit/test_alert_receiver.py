"""The lab's alert receiver records what Alertmanager posts, one notification per line."""

import json
import threading
import urllib.request
from http.server import ThreadingHTTPServer

from hastack.lab import alert_receiver

NOTIFICATION = {
    "version": "4", "status": "firing", "receiver": "operators",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "HostDown", "host": "lab-db1", "severity": "critical"},
         "annotations": {"summary": "lab-db1 is down"}, "startsAt": "2026-11-30T02:56:19Z",
         "endsAt": "0001-01-01T00:00:00Z"},
        {"status": "resolved", "labels": {"alertname": "AppServerDown", "host": "lab-app1"},
         "annotations": {}, "startsAt": "2026-11-30T02:50:00Z", "endsAt": "2026-11-30T02:58:00Z"},
    ],
}


def test_posted_notifications_are_recorded_and_read_back_alert_by_alert(tmp_path):
    log = tmp_path / "alerts.jsonl"
    server = ThreadingHTTPServer(("127.0.0.1", 0), alert_receiver.make_handler(log))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        req = urllib.request.Request(url, data=json.dumps(NOTIFICATION).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        bad = urllib.request.Request(url, data=b"not json", method="POST")
        try:
            urllib.request.urlopen(bad, timeout=5)
            raise AssertionError("a body that is not JSON was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
    finally:
        server.shutdown()
    alerts = list(alert_receiver.read(log))
    assert [(a["alertname"], a["status"], a["labels"]["host"]) for a in alerts] == [
        ("HostDown", "firing", "lab-db1"), ("AppServerDown", "resolved", "lab-app1")]
    assert alerts[0]["annotations"]["summary"] == "lab-db1 is down" and alerts[0]["receiver_path"] == "/alerts"
    assert len(log.read_text().splitlines()) == 1  # the refused body left no line


def test_no_log_yet_means_no_alerts(tmp_path):
    assert list(alert_receiver.read(tmp_path / "missing.jsonl")) == []
