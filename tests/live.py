"""Helpers for the client's tests against a live server: which contract sections it
serves yet, and a unique agent per test so tests never see each other's sessions."""

import uuid
from functools import cache

import pytest
import requests


def new_agent():
    """Return an agent id no other test uses."""
    return f"agent-{uuid.uuid4().hex[:12]}"


#: The base URL of a client that sends to this checkout's app in process
#: (``httpx.WSGITransport``): the app of this very code, which serves every section.
IN_PROCESS = "http://in-process.test"


@cache
def features(base_url):
    """Return the names of the newer contract sections ``base_url`` serves (asking it)."""
    if base_url == IN_PROCESS:
        return frozenset(SECTIONS)
    api = f"{base_url}/api"
    found = set()
    created = requests.post(f"{api}/sessions", json={"agent_id": "feature-probe"}, timeout=10)
    session = created.json()
    if "version" in session:
        found.add("versions")
    # A key with a space is malformed: a server that reads the header refuses it.
    probe = requests.post(
        f"{api}/sessions/{session['id']}/message",
        json={"content": "probe"},
        headers={"Idempotency-Key": "not valid"},
        timeout=10,
    )
    if probe.status_code == 422:
        found.add("idempotency")
    asks = {
        "changes": (f"{api}/changes", {"limit": "1"}),
        "count": (f"{api}/sessions/count", {}),
        "time_filters": (f"{api}/sessions", {"created_after": "2020-01-01T00:00:00Z"}),
        "messages_order": (f"{api}/sessions/{session['id']}/messages", {"order": "desc"}),
        "messages_wait": (f"{api}/sessions/{session['id']}/messages", {"wait": "0"}),
    }
    for name, (url, params) in asks.items():
        if requests.get(url, params=params, timeout=10).status_code == 200:
            found.add(name)
    requests.delete(f"{api}/sessions/{session['id']}", timeout=10)
    return frozenset(found)


SECTIONS = {
    "versions": "versions and If-Match (contract section 6)",
    "idempotency": "Idempotency-Key (contract section 5)",
    "changes": "GET /api/changes (contract section 7)",
    "count": "GET /api/sessions/count (contract section 8)",
    "time_filters": "the list's time filters (contract section 8)",
    "messages_order": "messages order=desc (contract section 8)",
    "messages_wait": "messages wait (contract section 7)",
}


def needs(base_url, feature):
    """Skip the test unless the server serves ``feature`` yet."""
    if feature not in features(base_url):
        pytest.skip(f"the server does not serve {SECTIONS[feature]} yet")
