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
import uuid

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sessions_app import create_app, openapi
from sessions_app.fields import SEQ_PATTERN
from sessions_app.idempotency import KEY_PATTERN

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


def accepting_412(schema):
    """Count a 412 as an answer to valid data, as schemathesis counts 404 and 409.

    A well-formed ``If-Match`` naming another version is valid data whose
    condition is false: the contract answers it 412.
    """
    config = schema.config.checks.positive_data_acceptance
    config.expected_statuses = [*config.expected_statuses, "412"]
    return schema


def own_key(case):
    """Give a case's valid ``Idempotency-Key`` a suffix of its own (still a valid key).

    The fuzzer draws the same few keys ("0", "!") for different bodies, which
    the contract rightly answers 422 (a key used for another request); what a
    case tests is one request, so each case gets a key no other case has.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(KEY_PATTERN, key):
        case.headers["Idempotency-Key"] = key[:223] + uuid.uuid4().hex


def valid_headers(case):
    """Send a positive case's headers as valid as it claims they are.

    Schemathesis' coverage phase draws header values from letters and digits
    only, and when a header's pattern needs other characters (an entity tag
    needs quotes) its "default positive test case" sends ``0`` anyway, which
    breaks the pattern: such a value is replaced by the parameter's example.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    for parameter in openapi.HEADER_PARAMETERS.values():
        value = (case.headers or {}).get(parameter["name"])
        if isinstance(value, str) and not re.fullmatch(parameter["schema"]["pattern"], value):
            case.headers[parameter["name"]] = parameter["example"]


# The document does not depend on the database: read it from an app that
# never connects, and send each case to the ``app`` fixture's.
schema = accepting_412(
    schemathesis.openapi.from_dict(
        json.loads(create_app({"DATABASE_URL": "sqlite:///:memory:"}).extensions["openapi"])
    )
)


def excluded_checks(case):
    """A session-list cursor is opaque and carries a check value.

    Only a next_cursor the service wrote is a cursor, so a generated string
    that fits the document is rightly refused (tests/test_list_finding.py
    covers cursors); every other check still runs on such a case.  So is a
    data filter nested deeper than 8 levels or longer than 4,096 characters,
    limits JSON Schema cannot state for any JSON value
    (tests/test_api_data_filter.py covers them).
    """
    opaque = case.operation.path == "/api/sessions" and "cursor" in (case.query or {})
    return [positive_data_acceptance] if opaque or _filter_past_limits(case) else []


def _filter_past_limits(case):
    from sessions_app import containment

    found = [(case.query or {}).get("data")]
    if isinstance(case.body, dict) and isinstance(case.body.get("filter"), dict):
        found.append(case.body["filter"].get("data"))
    for value in found:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                continue
        if value is not None and (
            containment.depth(value) > containment.MAX_DEPTH
            or len(json.dumps(value)) > containment.MAX_LENGTH
        ):
            return True
    return False


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
        SEQ_PATTERN, str(case.query.get("cursor", ""))
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
    valid_headers(case)
    own_key(case)
    case.call_and_validate(app=app, excluded_checks=excluded_checks(case))


def test_sessions_keep_the_contract_through_their_life(app):
    app.config["STREAM_MAX_SECONDS"] = 0
    base = accepting_412(schemathesis.openapi.from_wsgi("/api/openapi.json", app))

    class Machine(base.as_state_machine()):
        def before_call(self, case):
            super().before_call(case)
            valid_headers(case)
            own_key(case)
            # A bulk delete would remove the session the links follow, which
            # "resource just created is available" cannot know of: here bulk
            # changes only say what they would do (test_api_bulk.py has the rest).
            if case.operation.path == "/api/sessions/bulk" and isinstance(case.body, dict):
                case.body["dry_run"] = True

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=excluded_checks(case),
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    run_state_machine_as_test(
        Machine,
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
