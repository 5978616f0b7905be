"""Contract fuzzing: schemathesis reads /api/openapi.json and checks the app against it.

Every check runs (server errors, undeclared statuses, content types and
headers, response schemas, valid data refused, invalid data accepted, a
missing ``Allow`` on 405, ...), on each database of the ``app`` fixture, then
a stateful pass follows the document's links from a created session to its
get, update, message and delete.  ``FUZZ_EXAMPLES`` sets how many examples
each operation gets (``make fuzz`` runs a longer, randomised pass).
"""

import json
import os
import re

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from sessions_app import create_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
# A fixed seed in the bounded pass, so the suite gives the same answer on
# every run; the longer pass explores anew each time.
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)


# The document does not depend on the database: read it from an app that
# never connects, and send each case to the ``app`` fixture's.
schema = schemathesis.openapi.from_dict(
    json.loads(create_app({"DATABASE_URL": "sqlite:///:memory:"}).extensions["openapi"])
)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Long polls answer at once here: waiting has tests of its own (test_api_changes.py)."""
    if not case.query:
        return
    # Only valid values are replaced, so invalid ones are still refused.
    if (
        re.fullmatch("[0-9]{1,2}", str(case.query.get("wait", "")))
        and int(case.query["wait"]) <= 60
    ):
        case.query["wait"] = "0"
    # A seq past the newest change is a 422 (section 7), which a pattern
    # cannot say: start the feed from its beginning instead.
    if case.operation.path == "/api/changes" and re.fullmatch(
        "0|[1-9][0-9]{0,17}", str(case.query.get("cursor", ""))
    ):
        case.query["cursor"] = "0"


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """Keep every failure but "negative data accepted" for a query whose extra
    parameters are empty lists: those are never sent, so the request is valid."""
    if type(failure).__name__ != "AcceptedNegativeData" or not case.query:
        return True
    known = {parameter.name for parameter in case.operation.query}
    extra = [value for name, value in case.query.items() if name not in known]
    return not extra or any(value != [] for value in extra)


@schema.parametrize()
@SETTINGS
def test_every_operation_keeps_the_contract(case, app):
    app.config["STREAM_MAX_SECONDS"] = 0  # a stream, when asked for, ends at once
    case.call_and_validate(app=app)


def test_sessions_keep_the_contract_through_their_life(app):
    app.config["STREAM_MAX_SECONDS"] = 0
    machine = schemathesis.openapi.from_wsgi("/api/openapi.json", app).as_state_machine()
    run_state_machine_as_test(
        machine,
        settings=settings(SETTINGS, max_examples=EXAMPLES, stateful_step_count=8),
    )


# -- what the fuzzer found, pinned ------------------------------------------


def test_a_session_with_an_empty_task_can_be_listed_by_it(api):
    wanted = api.create(task_id="")
    api.create(task_id="t")
    assert [s["id"] for s in api.list(task_id="")["sessions"]] == [wanted["id"]]


def test_a_ten_digit_message_cursor_is_read_as_a_cursor(api):
    session = api.create()
    api.send(session["id"])
    assert api.messages(session["id"], cursor="2147483646")["messages"] == []


def test_large_floats_in_data_come_back_as_sent(api):
    data = {"big": 1e300, "wide": -1e20, "small": [1.5e-7], "max": 2**63 - 1}
    session = api.create(data=data)
    assert api.get(session["id"])["data"] == data
    assert api.patch(session["id"], status="active")["data"] == data
