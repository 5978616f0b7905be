"""The API guide's examples (``docs/api.rst``) are run, in order, against a real server.

Every ``.. code-block:: console`` of the page is a list of commands (``$``,
continued on lines that start with ``>``), each followed by the output it
showed.  The test starts Gunicorn on a fresh database (SQLite, and PostgreSQL
when ``TEST_DATABASE_URL`` is set), runs each command with bash (the page's
base URL swapped for the server's), and compares its output with the shown
one, line by line, with this normalisation only:

- ``\\r`` and trailing spaces are dropped, and blank lines at the end;
- values the server makes anew on every run (session and message ids,
  session-list cursors, request ids, timestamps) are learned the first time an
  output shows them: a later command or output that shows the same value must
  hold the same value of this run, and two shown values may not be one;
- an HTTP ``Date`` is matched by its shape, and the methods of an ``Allow``
  header in any order (Werkzeug lists them from a set).

Timestamps are learned like ids rather than matched by shape alone, so an
output that shows two fields as equal (``created_at`` and ``last_active`` of
a new session) checks that they are.

So a wrong status, header or body field fails, and so does an example whose
output depends on a step the page does not show.

README.rst's example is one of the page's blocks, copied: a test checks that
it still is.  To rewrite the shown outputs from a fresh run, README's copy
included (after a deliberate change of behaviour; review the diff)::

    .venv/bin/python tests/test_docs_examples.py --write

While writing a new example, a command may name a value of this run by
order of first appearance, as ``{session:2}`` (the second session id any
output showed), ``{msg:1}``, ``{cursor:1}`` or ``{time:-2}`` (the last but
one timestamp first shown); ``--write`` puts the real value in its place.
"""

import difflib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from databases import BACKENDS, new_database
from servers import serving

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.rst"
README = DOC.parents[1] / "README.rst"
SHOWN_BASE = "http://127.0.0.1:8000"
# Heartbeats every 2 s, so that a short stream example shows one.
SERVER_ENV = {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4", "STREAM_HEARTBEAT_SECONDS": "2"}
COMMAND_TIMEOUT = 60

# Values made anew by every run, learned from the first output that shows them.
LEARNED = {
    "session": r"session-[0-9a-z]{28}",
    "msg": r"msg-[0-9a-z]{28}",
    "cursor": r"[A-Za-z0-9_-]{40,}",
    "request_id": r"[0-9a-f]{32}",
    "time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
}
# Values matched by their shape only.
SHAPES = {"date": r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"}
TOKEN = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(f"(?P<{kind}>{pattern})" for kind, pattern in {**LEARNED, **SHAPES}.items())
    + r")(?![\w-])"
)
# Werkzeug lists the allowed methods from a set: their order differs by process.
ALLOW = re.compile(r"^(Allow: )(.*)$", re.MULTILINE)
PLACEHOLDER = re.compile(r"\{(session|msg|cursor|time):(-?\d+)\}")


@dataclass
class Example:
    line: int  # of the command in the page, from 1
    command: str
    shown: str


@dataclass
class Block:
    start: int  # index of the block's first content line
    end: int  # index after its last content line
    indent: str
    examples: list


def blocks(lines):
    """Return the console blocks of a page given as lines."""
    found = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != ".. code-block:: console":
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip():  # the directive's options
            i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        start = i
        indent = re.match(r"\s*", lines[start]).group()
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent)):
            i += 1
        end = i
        while end > start and not lines[end - 1].strip():
            end -= 1
        found.append(Block(start, end, indent, _examples(lines, start, end, indent)))
    return found


def _examples(lines, start, end, indent):
    examples = []
    for index in range(start, end):
        text = lines[index][len(indent) :]
        if text.startswith("$ "):
            examples.append(Example(index + 1, text[2:], ""))
        elif examples and text.startswith("> ") and not examples[-1].shown:
            examples[-1].command += "\n" + text[2:]
        elif examples:
            examples[-1].shown += text + "\n"
        else:
            raise AssertionError(f"{DOC.name}:{index + 1}: output before any command")
    return examples


def normalise(text):
    """Drop carriage returns, trailing spaces and trailing blank lines; sort ``Allow``."""
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return ALLOW.sub(lambda m: m[1] + ", ".join(sorted(m[2].split(", "))), "\n".join(lines))


def run(command):
    """Run a command with bash; return what it printed on standard output."""
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    return done.stdout


class Run:
    """The values of this run learned so far, and the server the commands go to."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.values = {}  # shown value -> this run's
        self.seen = {kind: [] for kind in LEARNED}  # this run's values, by first appearance

    def command(self, example):
        """The command to run: placeholders and learned values filled in, the server's URL."""
        text = PLACEHOLDER.sub(self._placeholder, example.command)
        for shown, actual in self.values.items():
            text = text.replace(shown, actual)
        return text.replace(SHOWN_BASE, self.base_url)

    def _placeholder(self, match):
        number = int(match[2])
        return self.seen[match[1]][number - 1 if number > 0 else number]

    def output(self, text):
        """Normalise an output of this run and note the values it shows first."""
        text = normalise(text.replace(self.base_url, SHOWN_BASE))
        for match in TOKEN.finditer(text):
            kind = match.lastgroup
            if kind in LEARNED and match[0] not in self.seen[kind]:
                self.seen[kind].append(match[0])
        return text

    def pattern(self, shown):
        """A regular expression for the output ``shown`` stands for; the new values' groups."""
        parts, groups, position = [], {}, 0
        for match in TOKEN.finditer(shown):
            parts.append(re.escape(shown[position : match.start()]))
            position = match.end()
            kind, value = match.lastgroup, match[0]
            if kind in SHAPES:
                parts.append(SHAPES[kind])
            elif value in self.values:
                parts.append(re.escape(self.values[value]))
            elif value in groups:
                parts.append(f"(?P={groups[value]})")
            else:
                groups[value] = f"g{len(groups)}"
                parts.append(f"(?P<{groups[value]}>{LEARNED[kind]})")
        parts.append(re.escape(shown[position:]))
        return re.compile("".join(parts)), groups

    def check(self, example, actual):
        """Fail unless ``actual`` is the output ``example`` shows; learn its new values."""
        shown = normalise(example.shown)
        pattern, groups = self.pattern(shown)
        match = pattern.fullmatch(actual)
        if match is None:
            diff = "\n".join(
                difflib.unified_diff(
                    self._masked(shown, known=True).splitlines(),
                    self._masked(actual).splitlines(),
                    "shown",
                    "actual",
                    lineterm="",
                )
            )
            pytest.fail(
                f"{DOC.name}:{example.line}: the output differs from the one shown\n"
                f"$ {example.command}\n{diff}",
                pytrace=False,
            )
        for value, group in groups.items():
            mine = match[group]
            taken = [shown for shown, other in self.values.items() if other == mine]
            assert not taken, (
                f"{DOC.name}:{example.line}: {value} and {taken[0]} are shown as two values,"
                f" but this run has one ({mine})"
            )
            self.values[value] = mine

    def _masked(self, text, known=False):
        """``text`` for a diff: learned values as this run's, the others as <kind>."""

        def mask(match):
            if known and match[0] in self.values:
                return self.values[match[0]]
            if not known and match[0] in self.values.values():
                return match[0]
            return f"<{match.lastgroup}>"

        return TOKEN.sub(mask, text)

    def align(self, shown, actual):
        """Learn values by position: the n-th value shown is the n-th value of this run."""
        pairs = zip(TOKEN.finditer(normalise(shown)), TOKEN.finditer(actual), strict=False)
        for old, new in pairs:
            if old.lastgroup == new.lastgroup in LEARNED and old[0] not in self.values:
                self.values[old[0]] = new[0]


@pytest.fixture(scope="module", params=BACKENDS)
def docs_server(request, tmp_path_factory):
    """Gunicorn on a fresh database, as ``make run`` starts it (see SERVER_ENV)."""
    folder = tmp_path_factory.mktemp(f"docs-{request.param}")
    with (
        new_database(request.param, folder) as url,
        serving(folder, DATABASE_URL=url, **SERVER_ENV) as (base_url, _process),
    ):
        yield base_url


@pytest.mark.server
def test_api_guide_examples(docs_server):
    lines = DOC.read_text().splitlines()
    found = [example for block in blocks(lines) for example in block.examples]
    assert len(found) >= 40, "the API guide's examples were not found"
    assert all("curl" in example.command for example in found)
    # Every curl the page shows is in a console block, so none goes unchecked.
    shown = [n for n, line in enumerate(lines, 1) if line.lstrip().startswith("$ curl")]
    assert shown == [example.line for example in found if example.command.startswith("curl")]
    this_run = Run(docs_server)
    for example in found:
        assert not PLACEHOLDER.search(example.command), (
            f"{DOC.name}:{example.line}: a placeholder left: run this module with --write"
        )
        actual = this_run.output(run(this_run.command(example)))
        this_run.check(example, actual)


def test_readme_example_is_one_of_the_guide_s():
    """README's example is a block of the API guide, so the guide's run checks it too."""
    guide = DOC.read_text().splitlines()
    readme = README.read_text().splitlines()
    guide_blocks = [guide[block.start : block.end] for block in blocks(guide)]
    found = blocks(readme)
    assert found, "README.rst shows no console example"
    for block in found:
        assert readme[block.start : block.end] in guide_blocks, (
            f"README.rst:{block.start + 1}: this example is not the API guide's:"
            " run this module with --write"
        )


def write_readme():
    """Copy into README.rst the guide's blocks that start with the same command."""
    guide = DOC.read_text().splitlines()
    by_first_line = {guide[block.start]: guide[block.start : block.end] for block in blocks(guide)}
    readme = README.read_text().splitlines()
    for block in reversed(blocks(readme)):
        readme[block.start : block.end] = by_first_line[readme[block.start]]
    README.write_text("\n".join(readme) + "\n")


def write(base_url):
    """Run the page's examples and write their commands and outputs back into it."""
    lines = DOC.read_text().splitlines()
    this_run = Run(base_url)
    replacements = []
    for block in blocks(lines):
        written = []
        for example in block.examples:
            command = this_run.command(example)
            actual = this_run.output(run(command))
            this_run.align(example.shown, actual)
            command = command.replace(base_url, SHOWN_BASE)
            first, *rest = command.split("\n")
            written += ["$ " + first] + ["> " + line for line in rest]
            written.extend(actual.splitlines() if actual else [])
            written.append("")
        replacements.append((block, [(block.indent + line).rstrip() for line in written[:-1]]))
    for block, written in reversed(replacements):
        lines[block.start : block.end] = written
    DOC.write_text("\n".join(lines) + "\n")
    write_readme()


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write")
    with (
        tempfile.TemporaryDirectory() as folder,
        serving(Path(folder), DATABASE_URL=f"sqlite:///{folder}/docs.sqlite3", **SERVER_ENV) as (
            url,
            _process,
        ),
    ):
        write(url)
