"""The test databases: SQLite always, PostgreSQL when TEST_DATABASE_URL is set."""

import os
import shutil
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

from sessions_app import create_app, db, migrations

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])


@contextmanager
def new_database(backend, tmp_path):
    """Make a database with no tables at all; yield its URL; drop it after.

    SQLite: a new file under ``tmp_path``; PostgreSQL: a new database on
    TEST_DATABASE_URL's server.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:12]}.sqlite3"
        return
    with _server_database(uuid.uuid4().hex[:12]) as url:
        yield url


@contextmanager
def worker_database():
    """Under a pytest-xdist worker with TEST_DATABASE_URL set: make a database of the
    worker's own (``<name>_gw0``…) on that server, yield its URL, drop it after.
    Otherwise yield None.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    with _server_database(worker) as url:
        yield url


@contextmanager
def _server_database(suffix):
    """Make the database ``<TEST_DATABASE_URL's name>_<suffix>`` on its server; yield its URL.

    One of that name left behind by a run that was killed is dropped first;
    the database is dropped after.
    """
    url = urlsplit(os.environ["TEST_DATABASE_URL"])
    name = f"{url.path.lstrip('/')}_{suffix}"
    admin_url = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url._replace(path=f"/{name}").geturl()
    finally:
        if db.database.obj is not None:
            db.database.close_all()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Migrated:
    """The newest schema, migrated once per run, for each test to start from.

    SQLite: one file in ``folder`` is migrated and closed (its WAL folded into
    it), and each test gets a copy of it.  PostgreSQL: TEST_DATABASE_URL's
    database is migrated once; each test then finds its tables empty.
    """

    def __init__(self, folder):
        self.folder = folder
        self._sqlite = None
        self._tables = None

    def prepare(self, url):
        """Before the app is made: make ``url``'s database the migrated schema."""
        if url.startswith("sqlite"):
            path = url.removeprefix("sqlite:///")
            for stale in (f"{path}-wal", f"{path}-shm"):
                # A WAL beside the copy would be replayed into it.
                if os.path.exists(stale):
                    os.remove(stale)
            shutil.copyfile(self._sqlite_file(), path)
        elif self._tables is None:
            self._tables = self._migrate(url)

    def empty(self, url):
        """After the app is made, bound to ``url``: empty PostgreSQL's tables that hold rows."""
        if url.startswith("sqlite"):
            return
        # A TRUNCATE costs a new file per table: only the tables that hold rows
        # (CASCADE: with those that refer to them, which cannot stay behind).
        probe = " UNION ALL ".join(
            f"SELECT '{table}' WHERE EXISTS (SELECT 1 FROM {table})" for table in self._tables
        )
        with db.database.connection_context():
            holding = [row[0] for row in db.database.execute_sql(probe)]
            if holding:
                db.database.execute_sql(f"TRUNCATE {', '.join(holding)} CASCADE")

    def _sqlite_file(self):
        if self._sqlite is None:
            path = os.path.join(self.folder, "migrated.sqlite3")
            self._migrate(f"sqlite:///{path}")
            # Closing the last connection folded the WAL into the file and removed it.
            assert not os.path.exists(f"{path}-wal"), "the migrated file's WAL is still open"
            self._sqlite = path
        return self._sqlite

    @staticmethod
    def _migrate(url):
        """Migrate ``url``'s database; return its tables but the migrations' history."""
        create_app({"TESTING": True, "DATABASE_URL": url})
        try:
            migrations.upgrade()
            with db.database.connection_context():
                if url.startswith("sqlite"):
                    db.database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                tables = db.database.get_tables()
        finally:
            db.database.close_all()
        return [table for table in tables if table != migrations.HISTORY_TABLE]
