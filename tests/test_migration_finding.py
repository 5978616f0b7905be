"""Migration 0005_finding on a database of release 0.1.0: status_changed_at's backfill."""

from test_migrations import make_release_database, raw, use

from sessions_app import migrations

# (id, status, created_at, last_active) added to the release's own rows.
T = 1_700_000_000_000_000
MORE = [
    ("session-0r5286200000000000000000000a", "created", T + 2, T + 2),
    ("session-0r5286200000000000000000000b", "created", T + 3, T + 9),
    ("session-0r5286200000000000000000000c", "paused", T + 4, T + 5),
    ("session-0r5286200000000000000000000d", "failed", T + 6, T + 7),
]


def test_status_changed_at_is_created_at_while_created_else_last_active(empty_database_url):
    make_release_database(empty_database_url)
    mark = "?" if empty_database_url.startswith("sqlite") else "%s"
    with raw(empty_database_url) as conn:
        for session_id, status, created_at, last_active in MORE:
            conn.execute(
                "INSERT INTO sessions (id, agent_id, task_id, status, prompt, data,"
                " created_at, last_active, message_count)"
                f" VALUES ({mark}, 'A', NULL, {mark}, NULL, '{{}}', {mark}, {mark}, 0)",
                (session_id, status, created_at, last_active),
            )
    use(empty_database_url)
    migrations.upgrade()
    with raw(empty_database_url) as conn:
        rows = conn.execute(
            "SELECT status, created_at, last_active, status_changed_at FROM sessions"
        ).fetchall()
    assert len(rows) == len(MORE) + 2
    for status, created_at, last_active, changed_at in rows:
        assert changed_at == (created_at if status == "created" else last_active), status


def test_the_upgraded_database_lists_by_activity_and_drops_the_message_index(
    empty_database_url,
):
    make_release_database(empty_database_url)
    client = use(empty_database_url).test_client()
    migrations.upgrade()
    page = client.get("/api/sessions?sort=last_active&order=asc").get_json()
    assert [s["status"] for s in page["sessions"]] == ["active", "completed"]
    assert all(s["status_changed_at"] == s["last_active"] for s in page["sessions"])
    with raw(empty_database_url) as conn:
        if empty_database_url.startswith("sqlite"):
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        else:
            names = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")]
    assert "message_session_id" not in names
    assert "session_status_last_active_id" in names
