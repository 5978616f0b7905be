"""states: the statuses, roles and the contract's transition table."""

import pytest
from contract import ALLOWED as CONTRACT

from sessions_app import states


def test_statuses_and_roles():
    assert states.STATUSES == ("created", "active", "paused", "completed", "failed")
    assert set(states.FINAL_STATUSES) == {"completed", "failed"}
    assert states.ROLES == ("user", "assistant", "system")
    assert states.DEFAULT_ROLE == "user"
    assert states.MESSAGE_STATUS == "sent"


def test_transitions_are_the_contract_table():
    assert {status: set(moves) for status, moves in states.TRANSITIONS.items()} == CONTRACT


@pytest.mark.parametrize("new", list(CONTRACT))
@pytest.mark.parametrize("current", list(CONTRACT))
def test_can_move(current, new):
    assert states.can_move(current, new) is (new == current or new in CONTRACT[current])


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_final_statuses_go_nowhere_else(final):
    assert [s for s in states.STATUSES if states.can_move(final, s)] == [final]
