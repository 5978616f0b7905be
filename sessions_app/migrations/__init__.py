"""The schema's history: numbered migrations, each applied once, in order, under a lock.

Each file ``NNNN_name.py`` beside this one defines ``up(migrator, db)``;
``migrator`` is a ``playhouse.migrate.SchemaMigrator`` and ``db`` the bound
database.  A migration declares the tables it creates as frozen models of
its own (never the app's models, which move on) and changes existing tables
with the migrator's operations.  Once released a file is never edited: a
later change is a new file with the next number.

On SQLite a migration never rebuilds ``sessions`` (drop and copy): with
foreign keys on, dropping it would delete every message.  It adds columns
with ``ALTER TABLE … ADD COLUMN`` instead.

The whole upgrade is one transaction under a lock (PostgreSQL: an advisory
lock; SQLite: its write lock, ``BEGIN IMMEDIATE``), so any number of
processes and hosts that start at once apply each migration exactly once:
the first does the work, the others then find nothing pending.
"""

import logging
import os

import click
from flask.cli import AppGroup
from peewee import PostgresqlDatabase
from playhouse.migrations import Runner

from ..db import connected, database, describe

logger = logging.getLogger(__name__)

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
HISTORY_TABLE = "schema_migration"
#: The schema of the first release, which made its tables without a history.
BASELINE = "0001_baseline"
#: Tables that release made; finding them without a history means "at BASELINE".
BASELINE_TABLES = ("sessions", "messages")

# Any number for pg_advisory_xact_lock, as long as every host uses the same.
_LOCK_KEY = 0x5E5510


class SchemaTooNew(Exception):
    """The database has migrations this code does not know: it is newer than the code."""

    def __init__(self, unknown, newest):
        self.unknown = unknown
        super().__init__(
            f"The database's schema is newer than this release: it has migration(s) "
            f"{', '.join(unknown)}, which this release does not know (its newest is {newest}). "
            "Run the release that applied them, or restore the backup taken before it."
        )


def _runner():
    return Runner(database.obj, DIRECTORY, table_name=HISTORY_TABLE)


def _lock():
    # SQLite: the transaction around the upgrade began with BEGIN IMMEDIATE,
    # which already holds the database's write lock.
    if isinstance(database.obj, PostgresqlDatabase):
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))


def _check_not_newer(runner, migrations):
    unknown = [m.name for m in migrations if m.path is None]
    if unknown:
        known = [m.name for m in migrations if m.path is not None]
        raise SchemaTooNew(unknown, known[-1] if known else "none")


def _adopt_release_database(runner, migrations):
    """Record BASELINE as applied in a database the first release made without a history."""
    if any(m.applied for m in migrations):
        return
    tables = set(database.get_tables())
    if all(table in tables for table in BASELINE_TABLES):
        runner.fake(BASELINE)
        logger.info("Found the tables of release 0.1.0 without a history: recorded %s", BASELINE)


def upgrade():
    """Apply every pending migration; return the names applied (none if up to date).

    Raises ``SchemaTooNew`` when the database has migrations this code lacks.
    """
    with connected(), database.atomic():
        _lock()
        runner = _runner()
        migrations = runner.status()
        _check_not_newer(runner, migrations)
        _adopt_release_database(runner, migrations)
        applied = runner.up()
    if applied and isinstance(database.obj, PostgresqlDatabase):
        # Statistics of what the migrations made (an expression index's
        # above all), now rather than at autovacuum's next visit; outside
        # the upgrade's transaction, which would leave a new index's empty.
        with connected():
            database.execute_sql("ANALYZE")
    for name in applied:
        logger.info("Applied migration %s", name)
    logger.info("Database schema up to date: %s", describe(database.obj))
    return applied


def status():
    """Return ``[(name, applied_at or None, known)]``: every migration, in order."""
    with connected():
        migrations = _runner().status()
    return [(m.name, m.applied, m.path is not None) for m in migrations]


db_cli = AppGroup("db", help="The database schema: its migrations and their state.")


@db_cli.command("upgrade")
def upgrade_command():
    """Apply the pending migrations (safe to run at any time, from any host)."""
    try:
        applied = upgrade()
    except SchemaTooNew as error:
        raise click.ClickException(str(error)) from None
    if applied:
        click.echo(f"Applied {', '.join(applied)} to {describe(database.obj)}.")
    else:
        click.echo(f"{describe(database.obj)} is up to date.")


@db_cli.command("status")
def status_command():
    """List the migrations: applied (with when) and pending."""
    rows = status()
    for name, applied_at, known in rows:
        if not known:
            state = f"applied {applied_at:%Y-%m-%d %H:%M:%S}, UNKNOWN to this release"
        elif applied_at is None:
            state = "pending"
        else:
            state = f"applied {applied_at:%Y-%m-%d %H:%M:%S}"
        click.echo(f"{name:<32} {state}")
    pending = sum(1 for _name, applied_at, _known in rows if applied_at is None)
    click.echo(f"{describe(database.obj)}: {len(rows) - pending} applied, {pending} pending.")


@click.command("init-db")
def init_db_command():
    """Bring the database to the newest schema (the same as ``db upgrade``)."""
    upgrade_command.callback()


def init_app(app):
    """Give the app's ``flask`` command the ``db`` group and ``init-db``."""
    app.cli.add_command(db_cli)
    app.cli.add_command(init_db_command)
