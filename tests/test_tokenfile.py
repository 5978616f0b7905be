"""The tokens file: its TOML, its errors naming the entry, the copy in force, ``tokens new``."""

import pytest

from sessions_app import create_app, tokenfile

GOOD = 'name = "ci"\nsha256 = "' + "a" * 64 + '"\naccess = "read-write"\n'


def entry(extra="", **replace):
    text = GOOD
    for key, value in replace.items():
        text = "\n".join(line for line in text.splitlines() if not line.startswith(key)) + "\n"
        text += f"{key} = {value}\n"
    return f"[[token]]\n{text}{extra}"


def test_a_good_file_maps_digests_to_entries():
    found = tokenfile.parse(
        entry('agents = ["team-a-*", "solo"]\n')
        + entry(name='"two"', sha256='"' + "B" * 64 + '"', access='"read-only"')
    )
    assert found == {
        "a" * 64: tokenfile.Entry("ci", "a" * 64, "read-write", ("team-a-*", "solo")),
        "b" * 64: tokenfile.Entry("two", "b" * 64, "read-only", None),
    }
    assert tokenfile.parse("") == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[token]\n", "SESSIONS_API_TOKENS_FILE is not valid TOML: "),
        ("tokens = []\n", "unknown top-level key 'tokens'"),
        ("token = 1\n", "'token' must be an array of tables"),
        (entry(name='"a b"'), "token 1: name must be 1 to 64 letters"),
        (entry(sha256='"secret-token"'), "token 1 ('ci'): sha256 must be the token's SHA-256"),
        (
            entry(access='"rw"'),
            "token 1 ('ci'): access must be 'read-write' or 'read-only', not 'rw'",
        ),
        (entry("agents = []\n"), "token 1 ('ci'): agents must be a non-empty list"),
        (entry('agents = ["*"]\n'), "token 1 ('ci'): agents: '*' names no agent"),
        (entry('agents = ["a*b"]\n'), "agents: 'a*b' may have a '*' only at its end"),
        (entry("agents = [1]\n"), "agents: 1 is not a string"),
        (entry("token = 'x'\n"), "token 1 ('ci'): unknown key 'token'"),
        (entry() + entry(), "token 2 ('ci'): another token has this name"),
        (entry() + entry(name='"b"'), "token 2 ('b'): the same sha256 as token 'ci'"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_entry(text, message):
    with pytest.raises(tokenfile.TokenFileError) as raised:
        tokenfile.parse(text)
    assert message in str(raised.value)


def test_the_copy_in_force_stays_when_the_file_breaks(tmp_path):
    path = tmp_path / "tokens.toml"
    with pytest.raises(tokenfile.TokenFileError, match="cannot be read"):
        tokenfile.adopt(str(path))  # nothing in force yet: the start stops
    path.write_text(entry())
    good, error = tokenfile.adopt(str(path))
    assert error is None and list(good) == ["a" * 64]
    path.write_text(entry(access='"rw"'))
    kept, error = tokenfile.adopt(str(path))
    assert kept is good and "access must be" in str(error)
    assert tokenfile.in_force(str(path)) is good
    tokenfile._in_force.clear()


def test_an_app_with_a_malformed_file_does_not_start(tmp_path):
    path = tmp_path / "tokens.toml"
    path.write_text(entry(access='"rw"'))
    with pytest.raises(tokenfile.TokenFileError, match=r"token 1 \('ci'\): access"):
        create_app(
            {"SESSIONS_API_TOKENS_FILE": str(path), "DATABASE_URL": f"sqlite:///{tmp_path}/s"}
        )


def test_tokens_new_prints_a_token_once_and_its_entry(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3"})
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "tokens",
            "new",
            "--name",
            "team-a",
            "--agents",
            "team-a-*",
            "--agents",
            'qu"ote',
            "--read-only",
        ]
    )
    assert result.exit_code == 0, result.output
    first, *rest = result.output.splitlines()
    token = first.rpartition(" ")[2]
    assert len(token) >= 43
    entries = tokenfile.parse("\n".join(rest))
    assert entries == {
        tokenfile.digest(token): tokenfile.Entry(
            "team-a", tokenfile.digest(token), "read-only", ("team-a-*", 'qu"ote')
        )
    }
    assert token not in "\n".join(rest)
    again = runner.invoke(args=["tokens", "new", "--name", "team-a"])
    assert again.output.splitlines()[0] != first


def test_tokens_new_refuses_what_the_file_would(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3"})
    result = app.test_cli_runner().invoke(args=["tokens", "new", "--name", "x", "--agents", "a*b"])
    assert result.exit_code == 2
    assert "agents: 'a*b' may have a '*' only at its end" in result.output
