"""``sessions``: the Session API from the shell, a thin layer over ``SessionsClient``.

Readable tables by default; ``--json`` on every command prints one JSON
document (JSON lines for ``watch`` and ``tail``).  Exit status 0 on
success, 1 when the service answered with an error (its detail on
stderr), 3 when it could not be reached, 2 for a usage error.
"""

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from functools import partial, wraps

import click
import stamina.instrumentation

from .api import DEFAULT_TIMEOUT, SessionsClient
from .errors import ApiError, ConnectionFailed, SessionsError

EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

STATUSES = ("created", "active", "paused", "completed", "failed")
ROLES = ("user", "assistant", "system")
CHANGE_TYPES = ("session.created", "session.updated", "message.created", "session.deleted")

_AGO = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# -- reading options ------------------------------------------------------------


class Moment(click.ParamType):
    """A point in time: RFC 3339 (``2026-11-29T10:00:00Z``) or an age (``30m``, ``2h``, ``7d``)."""

    name = "TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        match = _AGO.fullmatch(value.strip())
        if match:
            amount, unit = match.groups()
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is neither RFC 3339 nor an age such as 30m, 2h or 7d", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no offset: end it with Z or +HH:MM", param, ctx)
        return moment


class JsonObject(click.ParamType):
    """A JSON object given as text: ``'{"model": "x"}'``."""

    name = "JSON"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            loaded = json.loads(value)
        except ValueError as exc:
            self.fail(f"not JSON: {exc}", param, ctx)
        if not isinstance(loaded, dict):
            self.fail("must be a JSON object: {...}", param, ctx)
        return loaded


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, not a table.")(command)


def list_filters(command, status_flag="--status"):
    """The filters of ``list`` and ``count`` (``bulk`` names the status filter ``--in-status``)."""
    options = [
        click.option("--agent", "agent_id", help="Only this agent's sessions."),
        click.option("--task", "task_id", help="Only sessions of this task."),
        click.option(
            status_flag,
            "status",
            multiple=True,
            type=click.Choice(STATUSES),
            help="Only sessions in this status (repeat for several).",
        ),
        click.option("--since", "created_after", type=Moment(), help="Created after TIME."),
        click.option("--until", "created_before", type=Moment(), help="Created at or before TIME."),
        click.option("--active-since", "active_after", type=Moment(), help="Active after TIME."),
        click.option(
            "--idle-since",
            "active_before",
            type=Moment(),
            help="Last active at or before TIME (quiet since then).",
        ),
        click.option(
            "--active-before",
            "active_before",
            type=Moment(),
            hidden=True,
            help="The same as --idle-since.",
        ),
        click.option(
            "--data",
            type=JsonObject(),
            help="Only sessions whose data contains this JSON object: '{\"pr\": 42}'.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filters(given):
    return {name: value for name, value in given.items() if value not in (None, ())}


# -- writing output -------------------------------------------------------------


def _when(moment):
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _cell(value):
    return "-" if value is None else str(value)


def echo_table(headers, rows):
    """Print ``rows`` under ``headers`` in left-aligned columns, two spaces apart."""
    rows = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def echo_json(document):
    click.echo(json.dumps(document, ensure_ascii=False, indent=2))


def echo_json_line(document):
    click.echo(json.dumps(document, ensure_ascii=False))


def echo_session(session):
    """Print one session, field by field."""
    fields = [
        ("id", session.id),
        ("agent", session.agent_id),
        ("task", session.task_id),
        ("status", session.status),
        ("messages", session.message_count),
        ("created", _when(session.created_at)),
        ("last active", _when(session.last_active)),
    ]
    if session.version is not None:
        fields.append(("version", session.version))
    fields.append(("prompt", session.prompt))
    fields.append(("data", json.dumps(session.data, ensure_ascii=False)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {_cell(value)}")


def show_session(session, as_json):
    """Print a session as JSON or field by field."""
    if as_json:
        echo_json(session.raw)
    else:
        echo_session(session)


def echo_message(message):
    """Print a message: time, role, then its text (later lines indented)."""
    lead = f"{_when(message.timestamp)}  {message.role.ljust(9)}  "
    lines = message.content.splitlines() or [""]
    click.echo(lead + lines[0])
    for line in lines[1:]:
        click.echo(" " * len(lead) + line)


def echo_change(change):
    """Print one change of the feed on one line."""
    extra = []
    if change.message_id:
        extra.append(f"{change.message_id} ({change.role})")
    if change.changed:
        extra.append("changed " + ",".join(change.changed))
    if change.reason:
        extra.append(change.reason)
    line = f"{_when(change.at)}  {change.type.ljust(15)}  {change.session_id}  {change.status}"
    click.echo("  ".join([line, *extra]))


# -- errors and exit status -----------------------------------------------------


def reports_errors(command):
    """Turn the client's exceptions into a message on stderr and the exit status."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            click.echo(f"Error: {exc}", err=True)
            if exc.request_id:
                click.echo(f"(request id {exc.request_id})", err=True)
            sys.exit(EXIT_API_ERROR)
        except ConnectionFailed as exc:
            click.echo(f"Error: cannot reach the service: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except SessionsError as exc:  # e.g. an event stream that is not one
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)

    return run


def follows(command):
    """For ``watch`` and ``tail``: an interrupt (Ctrl-C) ends them quietly."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)

    return run


def client_of(ctx):
    """Return the context's client, made on first use from ``--url``/``--token``."""
    options = ctx.find_root().obj
    if "client" not in options:
        if not options["url"]:
            raise click.UsageError(
                "Give the service's address: --url URL, or set SESSIONS_API_URL."
            )
        client = SessionsClient(options["url"], token=options["token"], timeout=options["timeout"])
        options["client"] = ctx.find_root().with_resource(client)
    return options["client"]


# -- the commands -----------------------------------------------------------------


@click.group()
@click.option(
    "--url",
    envvar="SESSIONS_API_URL",
    help="The service, e.g. http://127.0.0.1:8000 [SESSIONS_API_URL].",
)
@click.option("--token", envvar="SESSIONS_API_TOKEN", help="A bearer token [SESSIONS_API_TOKEN].")
@click.option(
    "--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True, help="Seconds per request."
)
@click.version_option(package_name="sessions_app", prog_name="sessions")
@click.pass_context
def main(ctx, url, token, timeout):
    """Create, find, steer and message the Session API's sessions."""
    ctx.obj = {"url": url, "token": token, "timeout": timeout}
    stamina.instrumentation.set_on_retry_hooks([say_retrying])


def say_retrying(details):
    """Tell the person at the terminal why nothing happens for a moment."""
    cause = details.caused_by
    reason = str(cause) or type(cause).__name__
    click.echo(f"Retrying in {details.wait_for:.1f} s: {reason}", err=True)


@main.command("list")
@list_filters
@click.option(
    "--sort", type=click.Choice(["created_at", "last_active"]), help="Order by this time."
)
@click.option(
    "--order",
    type=click.Choice(["desc", "asc"]),
    help="Newest first (desc, the default) or oldest.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most N."
)
@click.option("--all", "show_all", is_flag=True, help="Show every matching session (no --limit).")
@json_option
@click.pass_context
@reports_errors
def list_command(ctx, sort, order, limit, show_all, as_json, **filters):
    """List sessions, newest first."""
    pager = client_of(ctx).sessions(
        limit=1000 if show_all else min(limit, 1000), sort=sort, order=order, **_filters(filters)
    )
    sessions = []
    for session in pager:
        sessions.append(session)
        if not show_all and len(sessions) >= limit:
            break
    if as_json:
        echo_json([session.raw for session in sessions])
        return
    echo_table(
        ["ID", "AGENT", "TASK", "STATUS", "MSGS", "CREATED", "LAST ACTIVE"],
        [
            [
                s.id,
                s.agent_id,
                s.task_id,
                s.status,
                s.message_count,
                _when(s.created_at),
                _when(s.last_active),
            ]
            for s in sessions
        ],
    )


@main.command()
@click.argument("session_id")
@json_option
@click.pass_context
@reports_errors
def show(ctx, session_id, as_json):
    """Show one session."""
    session = client_of(ctx).get(session_id)
    show_session(session, as_json)


@main.command()
@click.option("--agent", "agent_id", required=True, help="The agent running the session.")
@click.option("--task", "task_id", help="The task it works on.")
@click.option("--prompt", help="The initial prompt.")
@click.option("--data", type=JsonObject(), help="Free-form data, a JSON object.")
@json_option
@click.pass_context
@reports_errors
def create(ctx, agent_id, task_id, prompt, data, as_json):
    """Create a session."""
    session = client_of(ctx).create(agent_id, task_id=task_id, prompt=prompt, data=data)
    show_session(session, as_json)


@main.command()
@click.argument("session_id")
@click.argument("text")
@click.option("--role", type=click.Choice(ROLES), help="Who speaks (user, by default).")
@json_option
@click.pass_context
@reports_errors
def send(ctx, session_id, text, role, as_json):
    """Send a message to a session (TEXT '-' reads it from stdin)."""
    if text == "-":
        text = sys.stdin.read()
    receipt = client_of(ctx).send(session_id, text, role=role)
    if as_json:
        echo_json(receipt.raw)
    else:
        click.echo(
            f"Sent {receipt.message_id} to {receipt.session_id} at {_when(receipt.timestamp)}"
        )


@main.command()
@click.argument("session_id")
@click.option("--status", type=click.Choice(STATUSES), help="Move the session to this status.")
@click.option(
    "--data", type=JsonObject(), help="Merge into its data (JSON Merge Patch; null removes a key)."
)
@click.option("--prompt", help="Replace its prompt.")
@click.option("--if-match", help="Change it only if its version is still this one.")
@json_option
@click.pass_context
@reports_errors
def update(ctx, session_id, status, data, prompt, if_match, as_json):
    """Change a session's status, data or prompt."""
    changes = {"status": status, "data": data}
    if prompt is not None:
        changes["prompt"] = prompt
    if if_match is not None:
        changes["if_match"] = int(if_match) if if_match.isdigit() else if_match
    session = client_of(ctx).update(session_id, **changes)
    show_session(session, as_json)


@main.command()
@click.argument("session_id")
@click.option("--if-match", help="Delete it only if its version is still this one.")
@json_option
@click.pass_context
@reports_errors
def delete(ctx, session_id, if_match, as_json):
    """Delete a session and its messages."""
    if if_match is not None and if_match.isdigit():
        if_match = int(if_match)
    client_of(ctx).delete(session_id, if_match=if_match)
    if as_json:
        echo_json({"id": session_id, "deleted": True})
    else:
        click.echo(f"Deleted {session_id}")


@main.command()
@click.argument("session_id")
@click.option("--last", type=click.IntRange(1, 1000), help="Only the last N messages.")
@json_option
@click.pass_context
@reports_errors
def messages(ctx, session_id, last, as_json):
    """Show a session's messages, oldest first."""
    client = client_of(ctx)
    if last:
        found = list(reversed(client.messages(session_id, order="desc", limit=last).page().items))
    else:
        found = list(client.messages(session_id, limit=1000))
    if as_json:
        echo_json([message.raw for message in found])
        return
    for message in found:
        echo_message(message)


@main.command()
@list_filters
@json_option
@click.pass_context
@reports_errors
def count(ctx, as_json, **filters):
    """Count sessions, in all and by status."""
    counted = client_of(ctx).count(**_filters(filters))
    if as_json:
        echo_json(counted.raw)
        return
    echo_table(["STATUS", "SESSIONS"], [*counted.by_status.items(), ("total", counted.count)])


@main.command()
@partial(list_filters, status_flag="--in-status")
@click.option("--all", "every", is_flag=True, help="Every session (needed without a filter).")
@click.option("--status", "to", type=click.Choice(STATUSES), help="Move them to this status.")
@click.option("--delete", "delete", is_flag=True, help="Delete them (and their messages).")
@click.option("--dry-run", is_flag=True, help="Change nothing: say what would happen.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), help="At most this many per request (1,000)."
)
@click.option("--once", is_flag=True, help="One request only, even if more remain.")
@json_option
@click.pass_context
@reports_errors
def bulk(ctx, every, to, delete, dry_run, limit, once, as_json, **filters):
    """Set a status on, or delete, every session matching the filters, oldest first.

    Repeats the request until none remain (one request with --dry-run or --once).
    """
    status = to
    if (status is None) == (not delete):
        raise click.UsageError("give exactly one of --status STATUS and --delete")
    given = _filters(filters)
    if not given and not every:
        raise click.UsageError("give a filter, or --all for every session")
    if every:
        given["all"] = True
    client = client_of(ctx)
    totals = {"matched": 0, "changed": 0, "conflicts": 0}
    while True:
        done = client.bulk(set_status=status, delete=delete, dry_run=dry_run, limit=limit, **given)
        if as_json:
            echo_json_line(done.raw)
        for name in totals:
            totals[name] += getattr(done, name)
        if dry_run or once or done.remaining == 0 or done.matched == 0:
            break
    if as_json:
        return
    what = "deleted" if delete else f"moved to {status}"
    if dry_run:
        click.echo(f"Would change {done.matched:,} sessions ({what}); {done.remaining:,} more.")
        echo_table(["STATUS", "SESSIONS"], list(done.by_status.items()))
        return
    click.echo(
        f"{totals['changed']:,} of {totals['matched']:,} sessions {what}, "
        f"{totals['conflicts']:,} skipped (their status forbade it); {done.remaining:,} remain."
    )


@main.command()
@click.option("--agent", "agent_id", help="Only this agent's sessions.")
@click.option("--task", "task_id", help="Only sessions of this task.")
@click.option("--session", "session_id", help="Only this session.")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(CHANGE_TYPES),
    help="Only changes of this type (repeat for several).",
)
@click.option(
    "--cursor", default="latest", show_default=True, help="Start after this position (a seq)."
)
@click.option("--stream", is_flag=True, help="Read the feed as an event stream, not by long polls.")
@json_option
@click.pass_context
@follows
@reports_errors
def watch(ctx, agent_id, task_id, session_id, types, cursor, stream, as_json):
    """Print each change to the sessions as it happens, until interrupted."""
    filters = _filters(
        {"agent_id": agent_id, "task_id": task_id, "session_id": session_id, "type": types}
    )
    for change in client_of(ctx).watch(cursor, stream=stream, **filters):
        if as_json:
            echo_json_line(change.raw)
        else:
            echo_change(change)


@main.command()
@click.argument("session_id")
@json_option
@click.pass_context
@follows
@reports_errors
def tail(ctx, session_id, as_json):
    """Print a session's messages, then each new one as it arrives, until interrupted."""
    for message in client_of(ctx).tail(session_id):
        if as_json:
            echo_json_line(message.raw)
        else:
            echo_message(message)
