"""ContextPackage: JSON round trip, version check, clear errors, building from plain streams."""

import json

import pytest

from interaction_jax.background import (
    CONTEXT_PACKAGE_VERSION,
    ContextPackage,
    Delegation,
    DelegationEvent,
    build_context_package,
    chat_messages,
    render_transcript,
)
from interaction_jax.data.episode import BackgroundEvent, TextEvent, Word


def _package() -> ContextPackage:
    return build_context_package(
        "s1",
        " what is 347 times 29 ",
        3.0,
        user_words=[Word("what", 0.5, 0.7), Word("is", 0.75, 0.8), (0.9, "347"), ("times", 1.0, 1.2), (9.0, "future")],
        model_words=[(2.0, "one"), (2.2, "moment")],
        other_words=[Word("hey", 0.1, 0.2)],
        user_text=[TextEvent("typed", 1.5), (2.5, "more typed")],
        model_text=[(2.0, "one moment")],
        delegations=[Delegation(1, "weather in paris", 0.2, "done", "sunny", 1.1), Delegation(2, "x", 0.3)],
        metadata={"task": "delegation", "user": {"lang": "en"}},
    )


def test_round_trip():
    p = _package()
    assert p.version == CONTEXT_PACKAGE_VERSION
    q = ContextPackage.from_json(p.to_json())
    assert q == p
    assert ContextPackage.from_json(p.to_json().encode()) == p


def test_build_keeps_only_the_past_and_normalises():
    p = _package()
    assert p.request == "what is 347 times 29"
    assert [w.text for w in p.user_words] == ["what", "is", "347", "times"]  # "future" (t=9 > 3) dropped
    assert p.user_words[2] == Word("347", 0.9, 0.9)
    assert p.user_words[3] == Word("times", 1.0, 1.2)
    assert p.user_text == (TextEvent("typed", 1.5), TextEvent("more typed", 2.5))
    assert p.created_unix > 0
    short = build_context_package("s", "r", 3.0, user_words=[(t, str(t)) for t in range(3)], max_words=2)
    assert [w.text for w in short.user_words] == ["1", "2"]
    with pytest.raises(ValueError, match="cannot read"):
        build_context_package("s", "r", 1.0, user_words=["bare string"])


def test_transcript_and_messages_carry_the_conversation():
    p = _package()
    text = render_transcript(p)
    assert "user: what is 347 times" in text
    assert "assistant: one moment" in text
    assert "earlier delegation #1 (done): weather in paris -> sunny" in text
    msgs = chat_messages(p)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"].endswith("Request: what is 347 times 29")


@pytest.mark.parametrize(
    "payload, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"session_id": "s", "request": "r", "time": 1}', "no 'version'"),
        ('{"version": 2, "session_id": "s", "request": "r", "time": 1}', "unsupported version 2"),
        ('{"version": 1, "session_id": "s", "time": 1}', "missing required field 'request'"),
        ('{"version": 1, "session_id": "s", "request": "r", "time": 1, "bogus": 0}', "unknown field"),
        ('{"version": 1, "session_id": 5, "request": "r", "time": 1}', "'session_id' has type int"),
        ('{"version": 1, "session_id": "s", "request": "r", "time": 1, "user_words": 3}', "list of objects"),
        ('{"version": 1, "session_id": "s", "request": "r", "time": 1, "user_words": [{"text": "a"}]}', "malformed"),
        (
            '{"version": 1, "session_id": "s", "request": "r", "time": 1, '
            '"delegations": [{"job_id": 1, "request": "q", "time": 0, "status": "lost"}]}',
            "status 'lost'",
        ),
    ],
)
def test_bad_payloads_give_clear_errors(payload, match):
    with pytest.raises(ValueError, match=match):
        ContextPackage.from_json(payload)


def test_metadata_must_be_json():
    p = build_context_package("s", "r", 0.0, metadata={"x": object()})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        p.to_json()
    json.loads(build_context_package("s", "r", 0.0).to_json())


def test_delegation_event():
    with pytest.raises(ValueError, match="unknown kind"):
        DelegationEvent("finished", 1, "s", 0.0)
    done = DelegationEvent("done", 3, "s", 1.5, "42")
    assert done.terminal and not DelegationEvent("chunk", 3, "s", 1.0, "4").terminal
    assert done.to_background_event() == BackgroundEvent("result", 1.5, "42", 3)
    err = DelegationEvent("error", 3, "s", 2.0, "boom")
    assert err.to_background_event() == BackgroundEvent("error", 2.0, "boom", 3)
    assert DelegationEvent("cancelled", 3, "s", 2.0).to_background_event() is None
