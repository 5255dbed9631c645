"""Server-sent events: ``text/event-stream`` parsed as the HTML standard's rules say.

The agent sends one event per change on ``GET /v1/events``. This parser is the generic one, not a reader of
the agent's exact bytes, so a proxy or a later agent that adds comments, ids, CRLF line ends or multi-line
data does not break it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: ``event`` is its type (``"message"`` when the stream names none)."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns the stream's text, in chunks of any size, into events.

    Lines end with CRLF, LF or CR; a CR at the end of one chunk and an LF at the start of the next are one
    line end. An event is dispatched at a blank line, and only if it had a ``data`` field; comment lines
    (starting with ``:``) and unknown fields are ignored; an incomplete event at the end of the stream is
    dropped, since the stream may have been cut in its middle.
    """

    def __init__(self) -> None:
        self._partial = ""
        self._skip_lf = False
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        """Takes the next piece of the stream and returns the events it completes."""
        events: list[ServerSentEvent] = []
        for line in self._lines(chunk):
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self, chunk: str) -> list[str]:
        if not chunk:
            return []
        if not self._started:
            self._started = True
            chunk = chunk.removeprefix("\ufeff")
        if self._skip_lf:
            self._skip_lf = False
            chunk = chunk.removeprefix("\n")
        text = self._partial + chunk
        lines: list[str] = []
        start = 0
        for m in _LINE_END.finditer(text):
            lines.append(text[start : m.start()])
            start = m.end()
            if m.group() == "\r" and start == len(text):
                # The LF that may follow this CR is in the next chunk.
                self._skip_lf = True
        self._partial = text[start:]
        return lines

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Takes one line without its line end; returns the event a blank line dispatches."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(
            event=event or "message",
            data="\n".join(data),
            id=self._last_id,
            retry=self._retry,
        )


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of a byte stream, which the standard says is always UTF-8."""
    decoder = SSEDecoder()
    # Incremental, because a multi-byte character can be split between two reads.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async for chunk in chunks:
        for event in decoder.feed(text.decode(chunk)):
            yield event
    for event in decoder.feed(text.decode(b"", final=True)):
        yield event
