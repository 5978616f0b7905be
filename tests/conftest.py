"""Fixtures: an app per test on a fresh database, SQLite always and
PostgreSQL too when TEST_DATABASE_URL is set."""

import logging
import os
import threading
from contextlib import contextmanager

import pytest
from databases import BACKENDS, Migrated, new_database, worker_database
from servers import serving
from xdist.scheduler import LoadScopeScheduling

from sessions_app import create_app, db

# Under pytest-xdist (``make test`` runs it) each worker process gets a
# PostgreSQL database of its own, made from TEST_DATABASE_URL's name and
# dropped at the end: set here, before any test module reads the variable.
_worker_database = worker_database()
_worker_url = _worker_database.__enter__()
if _worker_url is not None:
    os.environ["TEST_DATABASE_URL"] = _worker_url


def pytest_unconfigure(config):
    _worker_database.__exit__(None, None, None)


#: Modules that load the machine on purpose and check what holds under that
#: load (no 503, bounds in seconds): under pytest-xdist they run one after
#: another on one worker, first, each while the other workers run the rest.
UNDER_LOAD = (
    "test_prune_server.py",
    "test_bulk_server.py",
    "test_db_frozen.py",
    "test_feed_order.py",
    "test_db_cut_off.py",
    "test_outage.py",
)


def work_unit(nodeid):
    """Return what a test is scheduled with: its module, or "under-load" for UNDER_LOAD's."""
    module = nodeid.split("::", 1)[0]
    return "under-load" if module.rpartition("/")[2] in UNDER_LOAD else module


class ModuleScheduling(LoadScopeScheduling):
    """``--dist loadgroup`` as this suite needs it: a module is one unit of work (its
    module-scoped servers start once), the UNDER_LOAD modules together are one, and
    units go out in the order of the collection (see ``pytest_collection_modifyitems``).

    pytest-xdist's own loadgroup reads ``xdist_group`` marks by renaming each
    item's node id, which pytest 9 no longer lets it do: every test was its own
    unit, and the UNDER_LOAD modules ran beside each other.
    """

    def __init__(self, config, log=None):
        super().__init__(config, log)
        # Not by the number of tests: the units that take longest come first.
        config.option.loadscopereorder = False

    def _split_scope(self, nodeid):
        return work_unit(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadgroup":
        return ModuleScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, order the collection as the units should start: the
    UNDER_LOAD modules first, then the other real-server modules, the longest,
    then the rest."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items.sort(key=lambda item: (item.path.name not in UNDER_LOAD, "server" not in item.keywords))


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A database URL on an empty database: a temp-file SQLite or the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.sqlite3"
    return os.environ["TEST_DATABASE_URL"]


@pytest.fixture(params=BACKENDS)
def empty_database_url(request, tmp_path):
    """The URL of a database with no tables at all (see ``new_database``)."""
    with new_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def server_database_url(request, tmp_path_factory):
    """A fresh database for one module's server: a temp SQLite file or a new PostgreSQL one."""
    with new_database(request.param, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def server(server_database_url, tmp_path_factory):
    """Gunicorn, 4 workers x 4 threads, on a free port: yield its base URL; stop it by its PID."""
    run_dir = tmp_path_factory.mktemp("gunicorn")
    try:
        with serving(
            run_dir, WEB_CONCURRENCY="4", GUNICORN_THREADS="4", DATABASE_URL=server_database_url
        ) as (base_url, _process):
            yield base_url
    finally:
        print(f"\n[server log: {run_dir / 'gunicorn.log'}]")


@pytest.fixture(scope="session")
def migrated(tmp_path_factory):
    """The schema, migrated once per run (see ``databases.Migrated``)."""
    return Migrated(tmp_path_factory.mktemp("migrated"))


@pytest.fixture
def make_app(migrated):
    """``make_app(database_url, **settings)``: an app on that database, freshly migrated
    and empty (a copy of the migrated SQLite file; PostgreSQL's tables emptied)."""

    def make(database_url, **settings):
        migrated.prepare(database_url)
        app = create_app({"TESTING": True, "DATABASE_URL": database_url, **settings})
        migrated.empty(database_url)
        return app

    return make


@pytest.fixture
def app(database_url, make_app):
    app = make_app(database_url)
    yield app
    db.database.close_all()


@pytest.fixture
def unreachable_client(tmp_path):
    """A client of an app whose database cannot be opened (its SQLite path is a folder)."""
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path}"})
    yield app.test_client()
    db.database.close_all()


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """Common calls to the API, each checking the status it expects."""

    def __init__(self, client):
        self.client = client

    def create(self, expect=201, **body):
        body.setdefault("agent_id", "CLAUDE_CODE")
        response = self.client.post("/api/sessions", json=body)
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    def get(self, session_id, expect=200):
        response = self.client.get(f"/api/sessions/{session_id}")
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    def patch(self, session_id, expect=200, **body):
        response = self.client.patch(f"/api/sessions/{session_id}", json=body)
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    def delete(self, session_id, expect=204):
        response = self.client.delete(f"/api/sessions/{session_id}")
        assert response.status_code == expect, response.get_json()

    def send(self, session_id, content="hello", expect=201, **body):
        response = self.client.post(
            f"/api/sessions/{session_id}/message", json={"content": content, **body}
        )
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    def list(self, expect=200, **params):
        response = self.client.get("/api/sessions", query_string=params)
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    def messages(self, session_id, expect=200, **params):
        response = self.client.get(f"/api/sessions/{session_id}/messages", query_string=params)
        assert response.status_code == expect, response.get_json()
        return response.get_json()


@pytest.fixture
def api(client):
    return Api(client)


class QueryCounter(logging.Handler):
    """Counts the SQL statements peewee runs (it logs each at DEBUG).

    ``statements`` holds them as text, ``queries`` as ``(sql, params)``.
    """

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.statements = []
        self.queries = []
        self.thread = threading.get_ident()

    def emit(self, record):
        # Children such as "peewee.pool" log connection bookkeeping, not SQL;
        # other threads (the change feed's watcher) are not the request's.
        if record.name == "peewee" and record.thread == self.thread:
            self.statements.append(record.getMessage())
            self.queries.append(record.msg)

    def __len__(self):
        return len(self.statements)


@pytest.fixture
def count_queries():
    """``with count_queries() as counted: ...``; ``len(counted)`` is the number run."""

    @contextmanager
    def counting():
        logger = logging.getLogger("peewee")
        counter = QueryCounter()
        level = logger.level
        logger.addHandler(counter)
        logger.setLevel(logging.DEBUG)
        try:
            yield counter
        finally:
            logger.removeHandler(counter)
            logger.setLevel(level)

    return counting


@pytest.fixture(scope="session", params=BACKENDS)
def live_backend(request):
    """The backend of the client's tests: of ``live_server``, or of an app in process."""
    return request.param


@pytest.fixture(scope="session")
def live_server(live_backend, tmp_path_factory):
    """A real Gunicorn (2 workers x 4 threads) on a fresh database, shared by the
    client's tests; yields its base URL.  Each test makes its own sessions."""
    from servers import serving

    folder = tmp_path_factory.mktemp(f"live-{live_backend}")
    with (
        new_database(live_backend, folder) as url,
        serving(folder, WEB_CONCURRENCY="2", GUNICORN_THREADS="4", DATABASE_URL=url) as (
            base_url,
            _process,
        ),
    ):
        yield base_url
