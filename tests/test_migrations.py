"""Migrations: a database of any earlier release upgrades in place and keeps every row."""

import json
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests
from databases import BACKENDS, new_database
from peewee import Model
from servers import free_port, serving, start_gunicorn, stop, wait_for

from sessions_app import (
    create_app,
    db,
    feed,
    migrations,
    models,  # noqa: F401 (its tables)
)

RELEASE_0_1 = Path(__file__).parent / "fixtures" / "release-0.1.0"
ROOT = Path(__file__).resolve().parents[1]

# Rows as release 0.1.0 stored them: ids, microsecond times, data as JSON text.
SESSIONS = [
    (
        "session-0r52860y800z8gfkh1e0w0e7sx50",
        "CLAUDE_CODE",
        "task-1",
        "active",
        "Fix the build",
        {"workdir": "/srv/app", "model": "opus", "nested": {"a": [1, 2.5, None, True]}},
        1_700_000_000_000_001 // 1000,
        1_700_000_000_500_000 // 1000,
        2,
    ),
    (
        "session-0r52861dg90649nn62kdt3qc3hk0",
        "CODEX",
        None,
        "completed",
        None,
        {"unicode": "é 😀 \u2028", "empty": {}, "big": 9_007_199_254_740_993},
        1_700_000_001_000_000 // 1000,
        1_700_000_001_000_000 // 1000,
        0,
    ),
]
# jsonb kept a float such as 1e300 as a 301-digit numeric; the migration
# gives it back as the float it was.
JSONB_ERA = {"huge": 1e300, "small": 1.5e-7, "id": "12345678901234567890"}
MESSAGES = [
    (
        "session-0r52860y800z8gfkh1e0w0e7sx50",
        1,
        "msg-0r52860zrtgf5jx1b9mj5jptk2r0",
        "user",
        "hello",
        1_700_000_000_100_000,
    ),
    (
        "session-0r52860y800z8gfkh1e0w0e7sx50",
        2,
        "msg-0r528615w4g4bnn1p0fnm6b955kg",
        "assistant",
        "hi  ",
        1_700_000_000_500_000,
    ),
]


def backend_of(url):
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@contextmanager
def raw(url):
    """A plain DB-API connection to ``url``'s database, committing on success."""
    if backend_of(url) == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA foreign_keys = 1")
    else:
        conn = psycopg.connect(url)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def make_release_database(url, data_type="text"):
    """Create release 0.1.0's tables in ``url`` (``data`` as ``data_type``) and its rows."""
    backend = backend_of(url)
    ddl = (RELEASE_0_1 / f"{backend}.sql").read_text()
    ddl = ddl.replace("data text NOT NULL", f"data {data_type} NOT NULL")
    mark = "?" if backend == "sqlite" else "%s"
    with raw(url) as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.execute(statement)
        for row in SESSIONS:
            values = (*row[:5], json.dumps(row[5]), *row[6:])
            conn.execute(f"INSERT INTO sessions VALUES ({', '.join([mark] * 9)})", values)
        for row in MESSAGES:
            conn.execute(f"INSERT INTO messages VALUES ({', '.join([mark] * 6)})", row)


def stored_rows(url):
    """Every session and message as stored, ``data`` parsed."""
    with raw(url) as conn:
        sessions = conn.execute(
            "SELECT id, agent_id, task_id, status, prompt, data, created_at, last_active,"
            " message_count FROM sessions ORDER BY id"
        ).fetchall()
        messages = conn.execute(
            "SELECT session_id, seq, message_id, role, content, timestamp"
            " FROM messages ORDER BY session_id, seq"
        ).fetchall()
    sessions = [(*row[:5], json.loads(row[5]), *row[6:]) for row in sessions]
    return sessions, [tuple(row) for row in messages]


def schema_of(url):
    """Tables, columns (type, nullability), primary keys, indexes and foreign keys.

    The history table is the migrations' own and not a model; defaults are
    left out (a migration may give a new NOT NULL column one for the rows
    already there).
    """
    found = {}
    with raw(url) as conn:
        if backend_of(url) == "sqlite":
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            for table in tables:
                columns = sorted(
                    (name, kind.upper(), bool(notnull), pk)
                    for _cid, name, kind, notnull, _default, pk in conn.execute(
                        f'PRAGMA table_info("{table}")'
                    )
                )
                indexes = sorted(
                    (
                        name,
                        unique,
                        tuple(r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')),
                    )
                    for _seq, name, unique, origin, _partial in conn.execute(
                        f'PRAGMA index_list("{table}")'
                    )
                    if origin == "c"
                )
                fks = sorted(
                    (r[3], r[2], r[4], r[6])
                    for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')
                )
                found[table] = {"columns": columns, "indexes": indexes, "foreign_keys": fks}
        else:
            tables = [
                name
                for (name,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                )
            ]
            for table in tables:
                columns = sorted(
                    conn.execute(
                        "SELECT column_name, data_type, character_maximum_length, is_nullable"
                        " FROM information_schema.columns"
                        " WHERE table_schema = 'public' AND table_name = %s",
                        (table,),
                    ).fetchall()
                )
                indexes = sorted(
                    conn.execute(
                        "SELECT c.relname, i.indisunique, i.indisprimary,"
                        " array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(n, o)"
                        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n"
                        "  ORDER BY k.o)"
                        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                        " WHERE i.indrelid = %s::regclass",
                        (table,),
                    ).fetchall()
                )
                # The primary key's own index is named by PostgreSQL, not us.
                indexes = [
                    (None if primary else name, unique, primary, tuple(cols))
                    for name, unique, primary, cols in indexes
                ]
                fks = sorted(
                    conn.execute(
                        "SELECT kcu.column_name, ccu.table_name, ccu.column_name, rc.delete_rule"
                        " FROM information_schema.referential_constraints rc"
                        " JOIN information_schema.key_column_usage kcu"
                        "  ON kcu.constraint_name = rc.constraint_name"
                        " JOIN information_schema.constraint_column_usage ccu"
                        "  ON ccu.constraint_name = rc.constraint_name"
                        " WHERE kcu.table_name = %s",
                        (table,),
                    ).fetchall()
                )
                found[table] = {"columns": columns, "indexes": indexes, "foreign_keys": fks}
    found.pop(migrations.HISTORY_TABLE, None)
    return found


def use(url):
    """Bind the database proxy to ``url`` through a new app; return the app."""
    return create_app({"TESTING": True, "DATABASE_URL": url})


def applied_names(url):
    with raw(url) as conn:
        rows = conn.execute(f"SELECT name FROM {migrations.HISTORY_TABLE} ORDER BY name")
        return [name for (name,) in rows]


def every_migration():
    return sorted(p.stem for p in Path(migrations.DIRECTORY).glob("[0-9]*.py"))


# -- upgrading --------------------------------------------------------------


def test_an_empty_database_upgrades_from_nothing(empty_database_url):
    use(empty_database_url)
    assert migrations.upgrade() == every_migration()
    assert applied_names(empty_database_url) == every_migration()
    assert set(schema_of(empty_database_url)) >= {"sessions", "messages"}


def test_upgrading_twice_changes_nothing(empty_database_url):
    use(empty_database_url)
    migrations.upgrade()
    before = schema_of(empty_database_url), applied_names(empty_database_url)
    assert migrations.upgrade() == []
    assert (schema_of(empty_database_url), applied_names(empty_database_url)) == before


def test_a_release_0_1_database_upgrades_with_every_row_kept(empty_database_url):
    make_release_database(empty_database_url)
    rows = stored_rows(empty_database_url)
    use(empty_database_url)

    applied = migrations.upgrade()

    assert migrations.BASELINE not in applied  # recognised, not created again
    assert applied_names(empty_database_url) == every_migration()
    assert stored_rows(empty_database_url) == rows


def test_the_api_serves_an_upgraded_release_0_1_database(empty_database_url):
    make_release_database(empty_database_url)
    client = use(empty_database_url).test_client()
    migrations.upgrade()

    first, second = SESSIONS
    got = client.get(f"/api/sessions/{first[0]}").get_json()
    assert (got["agent_id"], got["task_id"], got["status"], got["prompt"]) == first[1:5]
    assert got["data"] == first[5]
    assert got["message_count"] == 2
    assert client.get(f"/api/sessions/{second[0]}").get_json()["data"] == second[5]
    listed = client.get(f"/api/sessions/{first[0]}/messages").get_json()["messages"]
    assert [(m["message_id"], m["role"], m["content"]) for m in listed] == [
        (m[2], m[3], m[4]) for m in MESSAGES
    ]
    # Writes go on where the release left off.
    sent = client.post(f"/api/sessions/{first[0]}/message", json={"content": "after"})
    assert sent.status_code == 201
    assert client.get(f"/api/sessions/{first[0]}").get_json()["message_count"] == 3
    assert client.delete(f"/api/sessions/{first[0]}").status_code == 204
    with raw(empty_database_url) as conn:
        left = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert left == 0


def int_or_float(digits):
    number = int(digits)
    return number if -(2**63) <= number < 2**63 else float(number)


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL: TEST_DATABASE_URL not set")
def test_a_jsonb_data_column_becomes_text_keeping_every_value(tmp_path):
    with new_database("postgresql", tmp_path) as url:
        make_release_database(url, data_type="jsonb")
        with raw(url) as conn:
            conn.execute(
                "INSERT INTO sessions VALUES"
                " ('session-0r52861wrj0dyp4yzdr74e1q3mpg', 'A', NULL, 'created', NULL, %s, 1, 1,"
                " 0)",
                (json.dumps(JSONB_ERA),),
            )
            before = dict(conn.execute("SELECT id, data::text FROM sessions").fetchall())
        client = use(url).test_client()

        migrations.upgrade()

        with raw(url) as conn:
            kind = conn.execute(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'sessions' AND column_name = 'data'"
            ).fetchone()[0]
            after = dict(conn.execute("SELECT id, data FROM sessions").fetchall())
        assert kind == "text"
        assert {k: json.loads(v) for k, v in after.items()} == {
            k: json.loads(v, parse_int=int_or_float) for k, v in before.items()
        }
        got = client.get("/api/sessions/session-0r52861wrj0dyp4yzdr74e1q3mpg").get_json()
        assert got["data"] == JSONB_ERA
        for session in SESSIONS:
            assert client.get(f"/api/sessions/{session[0]}").get_json()["data"] == session[5]


# -- the schema the migrations make is the one the models describe ------------


def table_models(base=Model):
    """Return the package's tables: its models bound to the database that no other extends."""
    found = []
    for model in base.__subclasses__():
        if model.__subclasses__():
            found += table_models(model)
        elif model.__module__.startswith("sessions_app.") and model._meta.database is db.database:
            found.append(model)
    return found


def make_model_tables(backend, url):
    """Make in ``url`` the tables the models describe for ``backend``."""
    use(url)
    # SQLite's writers take their seq at once: it has no queue.
    tables = [m for m in table_models() if backend == "postgresql" or m is not feed.QueuedChange]
    with db.database.connection_context():
        db.database.create_tables(tables)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migrations_make_the_schema_the_models_describe(backend, tmp_path):
    with new_database(backend, tmp_path) as migrated, new_database(backend, tmp_path) as modelled:
        use(migrated)
        migrations.upgrade()
        make_model_tables(backend, modelled)
        assert schema_of(migrated) == schema_of(modelled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_release_0_1_database_ends_with_the_models_schema(backend, tmp_path):
    with new_database(backend, tmp_path) as upgraded, new_database(backend, tmp_path) as modelled:
        make_release_database(upgraded, data_type="jsonb" if backend == "postgresql" else "text")
        use(upgraded)
        migrations.upgrade()
        make_model_tables(backend, modelled)
        assert schema_of(upgraded) == schema_of(modelled)


# -- a database newer than the code ------------------------------------------


def future(url):
    """Upgrade ``url``, then record a migration this code does not have."""
    use(url)
    migrations.upgrade()
    with raw(url) as conn:
        mark = "?" if backend_of(url) == "sqlite" else "%s"
        conn.execute(
            f"INSERT INTO {migrations.HISTORY_TABLE} (name, applied) VALUES ({mark}, {mark})",
            ("9999_from_a_later_release", "2030-01-01 00:00:00"),
        )


def test_a_database_newer_than_the_code_is_refused(empty_database_url):
    future(empty_database_url)
    with pytest.raises(migrations.SchemaTooNew) as refused:
        migrations.upgrade()
    assert "9999_from_a_later_release" in str(refused.value)
    assert "newer than this release" in str(refused.value)


def flask_cli(url, *args):
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "sessions_app", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_refuses_a_newer_database_with_the_reason(empty_database_url):
    future(empty_database_url)
    done = flask_cli(empty_database_url, "db", "upgrade")
    assert done.returncode == 1
    assert "newer than this release" in done.stderr
    assert "9999_from_a_later_release" in done.stderr


# -- the commands -------------------------------------------------------------


def test_db_status_lists_applied_and_pending(empty_database_url):
    before = flask_cli(empty_database_url, "db", "status")
    assert before.returncode == 0, before.stderr
    for name in every_migration():
        assert f"{name}" in before.stdout
    assert f"0 applied, {len(every_migration())} pending." in before.stdout

    upgraded = flask_cli(empty_database_url, "init-db")
    assert upgraded.returncode == 0, upgraded.stderr
    assert ", ".join(every_migration()) in upgraded.stdout

    after = flask_cli(empty_database_url, "db", "status")
    assert "pending" not in after.stdout.replace("0 pending", "")
    assert f"{len(every_migration())} applied, 0 pending." in after.stdout
    assert flask_cli(empty_database_url, "db", "upgrade").stdout.strip().endswith("is up to date.")


def test_four_processes_upgrading_at_once_apply_each_migration_once(empty_database_url):
    make_release_database(empty_database_url)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "sessions_app", "db", "upgrade"],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "DATABASE_URL": empty_database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    assert applied_names(empty_database_url) == every_migration()
    # Exactly one process applied the pending ones; the others found none.
    assert sum("is up to date." in out for out in outputs) == 3, outputs
    assert stored_rows(empty_database_url)[1] == [tuple(m) for m in MESSAGES]


# -- at Gunicorn's start --------------------------------------------------------


@pytest.mark.server
def test_gunicorn_with_four_workers_upgrades_a_release_database(empty_database_url, tmp_path):
    make_release_database(empty_database_url)
    with serving(tmp_path, WEB_CONCURRENCY="4", DATABASE_URL=empty_database_url) as (url, _):
        got = requests.get(f"{url}/api/sessions/{SESSIONS[0][0]}", timeout=10).json()
        assert got["data"] == SESSIONS[0][5]
    assert applied_names(empty_database_url) == every_migration()


@pytest.mark.server
def test_gunicorn_refuses_to_start_on_a_database_newer_than_the_code(empty_database_url, tmp_path):
    future(empty_database_url)
    db.database.close_all()
    process = start_gunicorn(
        tmp_path, BIND=f"127.0.0.1:{free_port()}", DATABASE_URL=empty_database_url
    )
    try:
        assert process.wait(timeout=60) != 0
    finally:
        stop(process)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "newer than this release" in log
    assert "9999_from_a_later_release" in log


@pytest.mark.server
@pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL: TEST_DATABASE_URL not set")
def test_two_gunicorn_instances_starting_at_once_on_postgresql_apply_each_migration_once(
    tmp_path,
):
    with new_database("postgresql", tmp_path) as url:
        make_release_database(url)
        runs = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            port = free_port()
            process = start_gunicorn(
                tmp_path / name, BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2", DATABASE_URL=url
            )
            runs.append((f"http://127.0.0.1:{port}", process, tmp_path / name / "gunicorn.log"))
        try:
            for base, process, log in runs:
                wait_for(f"{base}/health", process, log)
            created = requests.post(
                f"{runs[0][0]}/api/sessions", json={"agent_id": "A"}, timeout=10
            ).json()
            got = requests.get(f"{runs[1][0]}/api/sessions/{created['id']}", timeout=10)
            assert got.json()["agent_id"] == "A"
        finally:
            for _base, process, _log in runs:
                stop(process)
        assert applied_names(url) == every_migration()
        logs = [log.read_text() for _base, _process, log in runs]
        assert sum("Applied migration" in text for text in logs) == 1, logs


def test_sessions_of_release_0_1_are_at_version_1_and_take_keys(empty_database_url):
    make_release_database(empty_database_url)
    client = use(empty_database_url).test_client()
    migrations.upgrade()

    session_id = SESSIONS[0][0]
    got = client.get(f"/api/sessions/{session_id}")
    assert got.get_json()["version"] == 1 and got.headers["ETag"] == '"1"'
    headers = {"Idempotency-Key": "after-upgrade"}
    body = {"content": "after"}
    first = client.post(f"/api/sessions/{session_id}/message", json=body, headers=headers)
    again = client.post(f"/api/sessions/{session_id}/message", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get(f"/api/sessions/{session_id}").get_json()["version"] == 2
