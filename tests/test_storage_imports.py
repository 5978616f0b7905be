"""Storage knows nothing of HTTP: the modules that define tables and their writes load no Flask."""

import subprocess
import sys

import pytest

#: Every module that defines a table, with the writes that go with it.
TABLE_MODULES = ["sessions_app.models", "sessions_app.feed.tables", "sessions_app.idempotency_keys"]


@pytest.mark.parametrize("module", TABLE_MODULES)
def test_a_table_module_imports_no_flask(module):
    check = f"import sys, {module}; assert 'flask' not in sys.modules, sorted(sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_list_names_every_module_that_defines_a_table():
    check = (
        "import sys, peewee\n"
        + "".join(f"import {module}\n" for module in TABLE_MODULES)
        + "import sessions_app.factory\n"
        + "def leaves(base):\n"
        + "    for model in base.__subclasses__():\n"
        + "        yield from leaves(model) if model.__subclasses__() else [model]\n"
        + "print(sorted({m.__module__ for m in leaves(peewee.Model)"
        + " if m.__module__.startswith('sessions_app.') and 'migrations' not in m.__module__}))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(TABLE_MODULES))
