"""GET /metrics: requests, latency, database errors and messages stored, in one
process (the test client) and summed over several Gunicorn workers."""

import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from servers import serving

from sessions_app import create_app, db

SESSION_ROUTE = "/api/sessions/<session_id:session_id>"


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def answered(method, route, status):
    return sample("sessions_http_requests_total", method=method, route=route, status=status)


def timed(method, route):
    return sample("sessions_http_request_duration_seconds_count", method=method, route=route)


def test_requests_are_counted_by_method_route_and_status(client, api):
    created, missing = ("POST", "/api/sessions", "201"), ("GET", SESSION_ROUTE, "404")
    # A client-chosen method and an unknown path share one label value each.
    odd = ("OTHER", "(unmatched)", "404")
    before = {key: answered(*key) for key in (created, missing, odd)}
    timed_before = timed("POST", "/api/sessions")
    api.create()
    api.create()
    api.get("session-0000000000000000000000000000", expect=404)
    assert client.open("/nowhere", method="BREW").status_code == 404
    assert answered(*created) == before[created] + 2
    assert answered(*missing) == before[missing] + 1
    assert answered(*odd) == before[odd] + 1
    assert timed("POST", "/api/sessions") == timed_before + 2


def test_messages_stored_are_counted_by_role(api):
    before = {
        role: sample("sessions_messages_stored_total", role=role) for role in ("user", "system")
    }
    session_id = api.create()["id"]
    api.send(session_id, "one")
    api.send(session_id, "two", role="system")
    api.patch(session_id, status="completed")
    api.send(session_id, "refused", expect=409)
    assert sample("sessions_messages_stored_total", role="user") == before["user"] + 1
    assert sample("sessions_messages_stored_total", role="system") == before["system"] + 1


def test_database_errors_are_counted(tmp_path):
    # A directory where the database file should be: SQLite cannot open it.
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path}"})
    before = sample("sessions_database_errors_total", error="OperationalError")
    try:
        assert app.test_client().get("/health").status_code == 503
    finally:
        db.database.close_all()
    assert sample("sessions_database_errors_total", error="OperationalError") == before + 1


def test_the_scrape_is_prometheus_text(client):
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {
        family.name for family in text_string_to_metric_families(response.get_data(as_text=True))
    }
    assert {"sessions_http_requests", "sessions_http_request_duration_seconds"} <= names


@pytest.mark.server
def test_the_numbers_add_up_over_several_workers():
    """Requests spread over 3 workers; one scrape reports them all."""
    with tempfile.TemporaryDirectory(prefix="sessions-metrics-") as folder:
        run = Path(folder)
        with serving(
            run,
            DATABASE_URL=f"sqlite:///{run}/sessions.sqlite3",
            WEB_CONCURRENCY="3",
            GUNICORN_THREADS="1",
        ) as (base, _gunicorn):
            # What came before (the start-up wait's health checks, however
            # many a slow start took) is taken off.
            before = scrape(base)
            sent = spread_requests(base)
            after = scrape(base)
            scraped = Counter({key: after[key] - before.get(key, 0) for key in after})
            workers = {
                path.name.rsplit("_", 1)[1] for path in (run / "prometheus").glob("counter_*.db")
            }
    print(f"\n[metrics] {sum(sent.values())} requests over {len(workers)} workers: {dict(sent)}")
    assert len(workers) >= 2, "the requests all went to one worker"
    for (method, route, status), count in sent.items():
        assert scraped["sessions_http_requests_total", method, route, status] == count
    assert scraped["sessions_messages_stored_total", "user"] == sent["POST", MESSAGE_ROUTE, "201"]
    for method, route in {(method, route) for method, route, _ in sent}:
        assert scraped["sessions_http_request_duration_seconds_count", method, route] == sum(
            count for (m, r, _), count in sent.items() if (m, r) == (method, route)
        )


MESSAGE_ROUTE = "/api/sessions/<session_id:session_id>/message"


def spread_requests(base, clients=6, rounds=5):
    """Send requests from several threads, each on a new connection; count them."""
    sent = Counter()
    lock = threading.Lock()

    def client():
        for _ in range(rounds):
            created = requests.post(f"{base}/api/sessions", json={"agent_id": "m"}, timeout=10)
            session = created.json()["id"]
            message = requests.post(f"{base}/api/sessions/{session}/message",
                                    json={"content": "x"}, timeout=10)  # fmt: skip
            health = requests.get(f"{base}/health", timeout=10)
            missing = requests.get(f"{base}/api/sessions/session-{'0' * 28}", timeout=10)
            with lock:
                sent["POST", "/api/sessions", str(created.status_code)] += 1
                sent["POST", MESSAGE_ROUTE, str(message.status_code)] += 1
                sent["GET", "/health", str(health.status_code)] += 1
                sent["GET", SESSION_ROUTE, str(missing.status_code)] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


def scrape(base):
    """Return the scraped samples, keyed by (name, *label values in label order)."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket"):
                continue
            key = (s.name, *[value for label, value in sorted(s.labels.items())])
            samples[key] = s.value
    return samples
