"""The test databases: SQLite always, PostgreSQL when TEST_DATABASE_URL is set."""

import os
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg

from sessions_app import db

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
    url = urlsplit(os.environ["TEST_DATABASE_URL"])
    name = f"{url.path.lstrip('/')}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url._replace(path="/postgres").geturl(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url._replace(path=f"/{name}").geturl()
        finally:
            if db.database.obj is not None:
                db.database.close_all()
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
