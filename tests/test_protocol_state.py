"""The command-order table: fail closed, and one refusal for every illegal move."""

from __future__ import annotations

import pytest

from fastmta.protocol import replies
from fastmta.protocol.server import _HANDLERS
from fastmta.protocol.state import ALLOWED, COMMAND_STATES, State, Transaction, sequence_refusal

VERBS = sorted(_HANDLERS)


@pytest.mark.parametrize("state", sorted(COMMAND_STATES, key=lambda s: s.name))
@pytest.mark.parametrize("verb", VERBS)
def test_every_move_is_allowed_or_refused_with_a_sequence_error(state: State, verb: bytes) -> None:
    refusal = sequence_refusal(state, verb)
    if verb in ALLOWED[state]:
        assert refusal is None
    else:
        assert refusal is not None
        assert (refusal.code, refusal.enhanced) in ((503, "5.5.1"), (554, "5.5.1"))


def test_rfc_5321_anytime_commands_work_before_helo() -> None:
    for verb in (b"NOOP", b"HELP", b"EXPN", b"VRFY", b"RSET", b"QUIT"):
        assert sequence_refusal(State.GREETED, verb) is None
    assert sequence_refusal(State.GREETED, b"MAIL") is replies.NEED_HELO
    assert sequence_refusal(State.MAIL, b"DATA") is replies.NO_VALID_RECIPIENTS
    assert sequence_refusal(State.RCPT, b"DATA", binarymime=True) is replies.BINARYMIME_NEEDS_BDAT
    assert sequence_refusal(State.BDAT, b"DATA") is replies.DATA_AFTER_BDAT


def test_unknown_verbs_are_refused_in_every_state() -> None:
    for state in COMMAND_STATES:
        assert sequence_refusal(state, b"XYZZY") is not None


def test_protocol_name_for_received() -> None:
    def name(extended: bool, tls: bool, utf8: bool = False) -> str:
        return Transaction("", {}, "h", extended, tls, utf8).protocol_name

    assert [name(False, False), name(True, False), name(True, True), name(True, False, True),
            name(True, True, True)] == ["SMTP", "ESMTP", "ESMTPS", "UTF8SMTP", "UTF8SMTPS"]
