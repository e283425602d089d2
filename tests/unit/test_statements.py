"""Statements: canonical bytes, envelopes and the checks made on them."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from federation.protocol.keys import generate_private_key, key_id
from federation.protocol.problems import HashfedError, Problem
from federation.protocol.statements import (
    DOMAIN_TAG,
    MAX_INT,
    Envelope,
    canonical_json,
    check_statement_time,
    open_envelope,
    sign_statement,
    verify_statement,
)

KEY = generate_private_key()
KID = key_id(KEY.public_key())

json_keys = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_INT, max_value=MAX_INT)
    | st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    """The fast path equals the RFC 8785 reference on the statement value domain."""
    assert canonical_json(value) == rfc8785.dumps(value)


def _signed(**extra: Any) -> Any:
    return sign_statement(
        {"type": "submissions", "items": [], **extra}, KEY, key_id=KID, org="acme"
    )


def test_sign_and_open_round_trip() -> None:
    statement = _signed()
    assert statement.signed_bytes.startswith(DOMAIN_TAG + b"submissions\n")
    assert statement.id == hashlib.sha256(statement.signed_bytes).hexdigest()
    opened = open_envelope(statement.envelope())
    assert opened == statement
    verify_statement(opened, KEY.public_key())


def test_wrong_key_fails_verification() -> None:
    opened = open_envelope(_signed().envelope())
    with pytest.raises(HashfedError) as info:
        verify_statement(opened, generate_private_key().public_key())
    assert info.value.problem is Problem.STATEMENT_SIGNATURE_INVALID


def _envelope(data: bytes) -> Envelope:
    return Envelope(
        statement=base64.b64encode(data).decode(),
        signature=base64.b64encode(KEY.sign(data)).decode(),
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"no domain line", Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b"submissions", Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b"Bad Type\n{}", Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b"submissions\n[1]", Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b"submissions\n{not json", Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b'submissions\n{"type": "submissions"}', Problem.STATEMENT_NOT_CANONICAL),
        (DOMAIN_TAG + b'submissions\n{"b":1,"a":2}', Problem.STATEMENT_NOT_CANONICAL),
        (DOMAIN_TAG + b'withdrawals\n{"type":"submissions"}', Problem.STATEMENT_MALFORMED),
        (DOMAIN_TAG + b'submissions\n{"type":"submissions"}', Problem.STATEMENT_MALFORMED),
    ],
)
def test_open_envelope_refusals(data: bytes, problem: Problem) -> None:
    with pytest.raises(HashfedError) as info:
        open_envelope(_envelope(data))
    assert info.value.problem is problem


def test_bad_base64_and_short_signature() -> None:
    for envelope in (
        Envelope(statement="!!!", signature=base64.b64encode(b"x" * 64).decode()),
        Envelope(statement=base64.b64encode(b"x").decode(), signature="AAAA"),
    ):
        with pytest.raises(HashfedError) as info:
            open_envelope(envelope)
        assert info.value.problem is Problem.STATEMENT_MALFORMED


@pytest.mark.parametrize("field", ["org", "key", "created", "v"])
def test_header_members_are_checked(field: str) -> None:
    bad = {"org": "ACME!", "key": "xyz", "created": -1, "v": 2}[field]
    statement = _signed(**{field: bad})
    with pytest.raises(HashfedError) as info:
        open_envelope(statement.envelope())
    assert info.value.problem is Problem.STATEMENT_MALFORMED


def test_statement_time_window() -> None:
    now = int(time.time())
    check_statement_time(_signed(created=now), now)
    for created in (now + 3600, now - 3 * 24 * 3600):
        with pytest.raises(HashfedError) as info:
            check_statement_time(_signed(created=created), now)
        assert info.value.problem is Problem.STATEMENT_STALE
