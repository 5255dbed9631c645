from __future__ import annotations

from collections.abc import AsyncIterator

from dstack_p2p.events import ServerSentEvent, SSEDecoder, aiter_events


def parse(*chunks: str) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_one_event() -> None:
    assert parse('event: peers\ndata: ["10.0.1.2"]\n\n') == [
        ServerSentEvent(event="peers", data='["10.0.1.2"]')
    ]


def test_multi_line_data_is_joined_with_newlines() -> None:
    [e] = parse("event: x\ndata: first\ndata:second\ndata\ndata:  two spaces\n\n")
    # One space after the colon is dropped, no more; a bare "data" line is an empty line of data.
    assert e.data == "first\nsecond\n\n two spaces"


def test_comments_and_unknown_fields_are_ignored() -> None:
    events = parse(": keep-alive\n\n:comment\nevent: leader\nfoo: bar\ndata: {}\n: in the middle\n\n")
    assert events == [ServerSentEvent(event="leader", data="{}")]


def test_unknown_event_names_are_delivered_for_the_caller_to_skip() -> None:
    assert [e.event for e in parse("event: future\ndata: 1\n\nevent: peers\ndata: []\n\n")] == [
        "future",
        "peers",
    ]


def test_no_event_name_means_message_and_no_data_means_no_event() -> None:
    assert parse("data: a\n\nevent: empty\n\n") == [ServerSentEvent(event="message", data="a")]
    # The type of an event without data does not carry over to the next one.
    assert parse("event: lost\n\ndata: b\n\n") == [ServerSentEvent(event="message", data="b")]


def test_crlf_and_cr_line_ends() -> None:
    expected = [ServerSentEvent(event="peers", data="[]"), ServerSentEvent(event="leader", data="{}")]
    assert parse("event: peers\r\ndata: []\r\n\r\nevent: leader\r\ndata: {}\r\n\r\n") == expected
    assert parse("event: peers\rdata: []\r\revent: leader\rdata: {}\r\r") == expected
    assert parse("event: peers\r\ndata: []\n\revent: leader\ndata: {}\r\n\n") == expected


def test_every_split_gives_the_same_events() -> None:
    stream = (
        '\ufeff: hello\r\nevent: peers\r\ndata: ["10.0.1.2",\r\ndata: "10.0.1.3"]\r\n\r\n'
        'event: leader\rdata: {"tokenId": 2}\r\rid: 7\nretry: 100\nevent: peers\ndata: []\n\n'
    )
    whole = parse(stream)
    assert [e.event for e in whole] == ["peers", "leader", "peers"]
    assert whole[0].data == '["10.0.1.2",\n"10.0.1.3"]'
    assert whole[2].id == "7" and whole[2].retry == 100
    for i in range(len(stream) + 1):
        assert parse(stream[:i], stream[i:]) == whole, f"split at {i}"
    assert parse(*stream) == whole


def test_cr_at_the_end_of_a_chunk_and_lf_at_the_start_of_the_next_are_one_line_end() -> None:
    # Were they two, the blank line would dispatch "data: a" early and the event name would be lost.
    assert parse("event: x\r", "\ndata: a\r", "\n\r", "\n") == [ServerSentEvent(event="x", data="a")]


def test_bom_only_at_the_start_and_bad_retry_ignored() -> None:
    [e] = parse("\ufeffdata: a\nretry: 1s\n\n")
    assert e == ServerSentEvent(event="message", data="a")
    [e] = parse("data: \ufeffa\n\n")
    assert e.data == "\ufeffa"


async def test_bytes_split_inside_a_character_and_an_unfinished_event_dropped() -> None:
    raw = 'event: peers\ndata: ["café"]\n\nevent: peers\ndata: ["cut"]\n'.encode()
    cut = raw.index("é".encode()) + 1

    async def chunks() -> AsyncIterator[bytes]:
        yield raw[:cut]
        yield raw[cut:]

    events = [e async for e in aiter_events(chunks())]
    # The second event has no closing blank line: the stream ended in its middle.
    assert events == [ServerSentEvent(event="peers", data='["café"]')]
