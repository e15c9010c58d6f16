"""Reading an OpenAI-style Server-Sent Events body, however the network cuts it into pieces."""

from __future__ import annotations

import pytest

from services.ai_worker.llm import StreamError, _chunks, _lines

BODY = (
    b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n'
    b": a comment\n\n"
    b'data: {"choices":[{"delta":{"content":" w\xc3\xb6rld"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
    b'data: {"after":"done is ignored"}\n\n'
)
EXPECTED = [
    {"choices": [{"delta": {"content": "Hello"}}]},
    {"choices": [{"delta": {"content": " wörld"}}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_cut_of_the_body_gives_the_same_chunks(ending: bytes) -> None:
    body = BODY.replace(b"\n", ending)
    assert list(_chunks(_lines(iter([body])))) == EXPECTED
    for cut in range(1, len(body)):
        pieces = iter([body[:cut], body[cut:]])
        assert list(_chunks(_lines(pieces))) == EXPECTED, (ending, cut)
    one_byte_each = (body[i : i + 1] for i in range(len(body)))
    assert list(_chunks(_lines(one_byte_each))) == EXPECTED


def test_a_last_line_without_its_end_is_read() -> None:
    assert list(_lines(iter([b"data: 1\ndata: 2"]))) == [b"data: 1", b"data: 2"]


def test_a_malformed_chunk_or_an_error_chunk_is_a_stream_error() -> None:
    with pytest.raises(StreamError, match="malformed"):
        list(_chunks(_lines(iter([b"data: {not json\n\n"]))))
    with pytest.raises(StreamError, match="overloaded"):
        list(_chunks(_lines(iter([b'data: {"error":{"message":"overloaded"}}\n\n']))))
