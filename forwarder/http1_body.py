"""The application's request body as the async iterator the pool pulls (h11, on demand).

Async adapter used by :mod:`.http1`: nothing is read from the application's socket
until the pool asks for the next piece, so an upload moves only as fast as the
upstream takes it. ``Expect: 100-continue`` is answered on the first pull.
"""

from __future__ import annotations

import asyncio

import h11

__all__ = ["RequestBody", "body_length", "framing_problem", "has_both_lengths"]


class RequestBody:
    """The request body as an async iterator the pool pulls; reads the socket on demand."""

    __slots__ = ("flow", "done", "app_error", "_pending")

    def __init__(self, flow) -> None:  # flow: http1._Flow (conn, counters, recv, feed, sendall)
        self.flow = flow
        self.done = False
        self.app_error: h11.RemoteProtocolError | None = None
        self._pending: asyncio.Task | None = None

    def __aiter__(self) -> RequestBody:
        """Itself: one pass only, like the socket behind it."""
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body (h11 de-chunked); StopAsyncIteration at its end."""
        flow = self.flow
        conn = flow.conn
        if self.done:
            raise StopAsyncIteration
        if conn.they_are_waiting_for_100_continue:
            await flow.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.app_error = exc
                raise
            if event is h11.NEED_DATA:
                # A task, so that the flow can cancel a read the pool left hanging.
                self._pending = asyncio.ensure_future(flow.recv())
                try:
                    data = await self._pending
                finally:
                    self._pending = None
                flow.feed(data)
                continue
            if type(event) is h11.Data:
                flow.counters.bytes_up += len(event.data)
                return bytes(event.data)
            self.done = True
            raise StopAsyncIteration  # EndOfMessage

    def abandon_if_running(self) -> None:
        """Cancel a socket read still in flight (the pool stopped pulling the body)."""
        if self._pending is not None:
            self._pending.cancel()


def body_length(request: h11.Request) -> int | None:
    """0 without a body, n for Content-Length, None for chunked (h11 validated both)."""
    length = 0
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def has_both_lengths(request: h11.Request) -> bool:
    """Transfer-Encoding and Content-Length together (RFC 9112 §6.1): h11 frames by the
    Transfer-Encoding; the relay drops the Content-Length and closes after the response."""
    names = {name for name, _ in request.headers}
    return b"transfer-encoding" in names and b"content-length" in names


def framing_problem(request: h11.Request) -> str | None:
    """Why the request's body framing cannot be trusted (a 400 reason), or None.

    h11 already answers conflicting Content-Length values (400) and any coding but
    ``chunked`` (501); left here: Transfer-Encoding in an HTTP/1.0 request, which RFC 9112
    §6.1 says to treat as faulty framing (1.0 has no chunked coding).
    """
    if request.http_version == b"1.0" and any(name == b"transfer-encoding" for name, _ in request.headers):
        return "Transfer-Encoding in an HTTP/1.0 request: its body framing cannot be trusted"
    return None
