"""A job's stream entries: the tokens of one flush become one entry, in order, around the rest."""

from __future__ import annotations

from services.ai_worker.job_stream import _merged


def _token(text: str) -> dict[str, str]:
    return {"type": "token", "text": text}


def test_consecutive_tokens_are_one_entry_and_other_events_stay_between() -> None:
    entries = [
        _token("Hel"),
        _token("lo"),
        {"type": "reset"},
        _token("Hi"),
        _token(" there"),
        _token("!"),
        {"type": "end", "outcome": "completed"},
    ]
    assert _merged(entries) == [
        _token("Hello"),
        {"type": "reset"},
        _token("Hi there!"),
        {"type": "end", "outcome": "completed"},
    ]
    # The caller's entries are left as they were (they may be retried).
    assert entries[0] == _token("Hel")


def test_nothing_to_merge_is_left_alone() -> None:
    assert _merged([]) == []
    assert _merged([_token("a")]) == [_token("a")]
    end = {"type": "end", "outcome": "failed"}
    assert _merged([end]) == [end]
