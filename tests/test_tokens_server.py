"""The tokens file under a real Gunicorn: read at start, again on SIGHUP, a bad file kept out."""

import signal
import time

import pytest
import requests
from servers import START_TIMEOUT, serving, start_gunicorn, worker_pids

from sessions_app import tokenfile

pytestmark = pytest.mark.server

OLD, NEW = "old-token-0123456789", "new-token-9876543210"


def entry(name, token, access="read-write"):
    return (
        f'[[token]]\nname = "{name}"\nsha256 = "{tokenfile.digest(token)}"\n'
        f'access = "{access}"\nagents = ["team-a-*"]\n'
    )


def status(base_url, token):
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(f"{base_url}/api/sessions", headers=headers, timeout=10).status_code


def reload(process, log_path, mark):
    """SIGHUP the master; return once every worker is one it started after, with ``mark`` logged."""
    before = worker_pids(process.pid)
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        workers = worker_pids(process.pid)
        # The control socket's process is a child too: new workers have booted
        # when none of the old ones is left and as many children run.
        if mark in log_path.read_text() and not (workers & before) and len(workers) >= len(before):
            return
        time.sleep(0.1)
    pytest.fail(f"no reload after SIGHUP:\n{log_path.read_text()}")


def test_sighup_rotates_tokens_and_a_bad_file_keeps_them(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(entry("old", OLD))
    run = tmp_path / "run"
    run.mkdir()
    log = run / "gunicorn.log"
    db_url = f"sqlite:///{run}/sessions.sqlite3"
    with serving(
        run, WEB_CONCURRENCY="2", DATABASE_URL=db_url, SESSIONS_API_TOKENS_FILE=str(path)
    ) as (base_url, process):
        assert (status(base_url, OLD), status(base_url, NEW)) == (200, 401)

        # Rotation, step 1: add the new token beside the old one.
        path.write_text(entry("old", OLD) + entry("new", NEW))
        reload(process, log, "2 tokens in force")
        assert [status(base_url, t) for t in (OLD, NEW) * 4] == [200] * 8

        # A malformed file: the tokens in force stay, and the log says why.
        path.write_text(entry("old", OLD) + entry("new", NEW, access="rw"))
        reload(process, log, "Tokens file not reloaded")
        assert "token 2 ('new'): access must be 'read-write' or 'read-only'" in log.read_text()
        assert [status(base_url, t) for t in (OLD, NEW) * 4] == [200] * 8

        # Step 2: remove the old token.
        path.write_text(entry("new", NEW))
        reload(process, log, "1 tokens in force")
        assert [status(base_url, t) for t in (OLD, NEW) * 4] == [401, 200] * 4


def test_a_malformed_file_stops_the_start_naming_the_entry(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(entry("fine", OLD) + entry("broken", NEW, access="all"))
    gunicorn = start_gunicorn(
        tmp_path,
        BIND="127.0.0.1:0",
        DATABASE_URL=f"sqlite:///{tmp_path}/sessions.sqlite3",
        SESSIONS_API_TOKENS_FILE=str(path),
    )
    try:
        assert gunicorn.wait(timeout=60) == 1
    finally:
        if gunicorn.poll() is None:
            gunicorn.kill()
            gunicorn.wait()
    text = (tmp_path / "gunicorn.log").read_text()
    assert f"Not starting: SESSIONS_API_TOKENS_FILE {path}: token 2 ('broken'): access" in text
    assert "Booting worker" not in text
