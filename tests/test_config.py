"""config: defaults in code, then the environment, then a mapping."""

import re
from pathlib import Path

import pytest

from sessions_app import config

#: Where the configuration tables are: the defaults they give are the ones
#: promised, so they are read from there, not written out a third time here.
DOCUMENTED_IN = Path(__file__).parent.parent / "docs" / "operations.rst"
_ROW = re.compile(r"^``([A-Z_]+)``(?: / ``[A-Z_]+``)?\s{2,}(\S.*?)(?:\s{2,}|$)")


def documented_tables():
    """Return the configuration tables (Variable, Default, Meaning): ``{name: Default cell}``."""
    tables, rows, state = [], None, None
    for line in DOCUMENTED_IN.read_text().splitlines():
        border = re.fullmatch(r"=+( +=+)+", line)
        if re.match(r"Variable +Default +Meaning$", line):
            state = "header"
        elif border and state == "header":
            state, rows = "body", {}
        elif border and state == "body":
            tables.append(rows)
            state = None
        elif state == "body" and (row := _ROW.match(line)):
            rows[row[1]] = row[2]
    return tables


def documented_default(cell, kind, documented):
    """Read a Default cell: a literal, an empty or unset value, or another variable's."""
    if cell.startswith("(empty"):
        return ""
    if cell.startswith("(unset"):
        return None
    literal = re.match(r"``([^`]*)``", cell)[1]
    if literal.startswith("$"):
        return documented[literal[1:]]
    return kind(literal)


def test_defaults_without_environment_are_those_the_docs_give():
    tables = documented_tables()
    (service,) = [table for table in tables if "DATABASE_URL" in table]
    cells = {name: cell for table in tables for name, cell in table.items()}
    assert set(service) <= set(config.SETTINGS), "documented but not read"
    assert set(config.SETTINGS) <= set(cells), "read but not documented"
    documented = {}
    for name, (_default, kind) in sorted(
        config.SETTINGS.items(), key=lambda item: "$" in cells[item[0]]
    ):
        documented[name] = documented_default(cells[name], kind, documented)
    assert config.load(environ={}) == documented
    assert documented["DATABASE_POOL_SIZE"] == documented["GUNICORN_THREADS"] == 2


def test_the_pool_follows_the_threads_unless_set():
    assert config.load(environ={"GUNICORN_THREADS": "5"})["DATABASE_POOL_SIZE"] == 5
    both = {"GUNICORN_THREADS": "5", "DATABASE_POOL_SIZE": "3"}
    assert config.load(environ=both)["DATABASE_POOL_SIZE"] == 3


def test_environment_overrides_defaults_with_types():
    environ = {"DATABASE_URL": "postgresql://db/x", "MAX_BODY_BYTES": "2048", "UNRELATED": "1"}
    loaded = config.load(environ=environ)
    assert loaded["DATABASE_URL"] == "postgresql://db/x"
    assert loaded["MAX_BODY_BYTES"] == 2048
    assert "UNRELATED" not in loaded


def test_mapping_overrides_environment():
    loaded = config.load({"MAX_BODY_BYTES": 10, "TESTING": True}, environ={"MAX_BODY_BYTES": "20"})
    assert loaded["MAX_BODY_BYTES"] == 10
    assert loaded["TESTING"] is True


def test_from_environ_reads_only_known_names():
    assert config.from_environ({"PATH": "/bin", "DATABASE_POOL_SIZE": "4"}) == {
        "DATABASE_POOL_SIZE": 4
    }


def test_environment_is_read_when_loading_not_at_import(monkeypatch):
    monkeypatch.setenv("RETRY_AFTER_SECONDS", "7")
    assert config.load()["RETRY_AFTER_SECONDS"] == 7


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_BODY_BYTES": "1MB"}, "MAX_BODY_BYTES='1MB' is not a valid int"),
        ({"DATABASE_POOL_SIZE": ""}, "DATABASE_POOL_SIZE='' is not a valid int"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES must be at least 1, not 0"),
        ({"DATABASE_POOL_SIZE": "-1"}, "DATABASE_POOL_SIZE must be at least 1, not -1"),
        ({"SQLITE_BUSY_TIMEOUT_MS": "0"}, "SQLITE_BUSY_TIMEOUT_MS must be at least 1, not 0"),
        ({"GUNICORN_THREADS": "0"}, "GUNICORN_THREADS must be at least 1, not 0"),
    ],
)
def test_bad_values_are_refused_with_their_name(environ, message):
    with pytest.raises(ValueError) as raised:
        config.load(environ=environ)
    assert str(raised.value) == message


def test_session_retention_is_unset_by_default_and_read_in_seconds():
    assert config.load(environ={})["SESSION_RETENTION_SECONDS"] is None
    loaded = config.load(environ={"SESSION_RETENTION_SECONDS": "86400"})
    assert loaded["SESSION_RETENTION_SECONDS"] == 86400


@pytest.mark.parametrize("value", ["0", "-1"])
def test_session_retention_must_be_a_second_or_more(value):
    with pytest.raises(ValueError, match="SESSION_RETENTION_SECONDS must be at least 1"):
        config.load(environ={"SESSION_RETENTION_SECONDS": value})
