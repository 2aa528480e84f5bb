"""The application's request body as the async iterator the pool pulls (read on demand).

Async adapter used by :mod:`.http1`: nothing is read from the application's socket
until the pool asks for the next piece, so an upload moves only as fast as the
upstream takes it; :class:`~atlantic.pool.h1wire.MessageReader` undoes the framing.
``Expect: 100-continue`` is answered on the first pull.
"""

from __future__ import annotations

import asyncio

from atlantic.pool.h1wire import Request, WireError

__all__ = ["CONTINUE", "RequestBody", "framing_problem"]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestBody:
    """The request body as an async iterator the pool pulls; reads the socket on demand."""

    __slots__ = ("flow", "done", "app_error", "_pending")

    def __init__(self, flow) -> None:  # flow: http1._Flow (reader, counters, recv, sendall)
        self.flow = flow
        self.done = False
        self.app_error: WireError | None = None
        self._pending: asyncio.Task | None = None

    def __aiter__(self) -> RequestBody:
        """Itself: one pass only, like the socket behind it."""
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body (de-chunked); StopAsyncIteration at its end."""
        flow = self.flow
        if self.done:
            raise StopAsyncIteration
        if flow.waiting_for_continue:
            flow.waiting_for_continue = False
            await flow.sendall(CONTINUE)
        reader = flow.reader
        while True:
            try:
                data = reader.next_body()
            except WireError as exc:
                self.app_error = exc
                raise
            if data is None:
                # A task, so that the flow can cancel a read the pool left hanging.
                self._pending = asyncio.ensure_future(flow.recv())
                try:
                    received = await self._pending
                finally:
                    self._pending = None
                reader.receive_data(received)
                continue
            if data:
                flow.counters.bytes_up += len(data)
                return data
            self.done = True
            raise StopAsyncIteration

    def abandon_if_running(self) -> None:
        """Cancel a socket read still in flight (the pool stopped pulling the body)."""
        if self._pending is not None:
            self._pending.cancel()


def framing_problem(request: Request) -> str | None:
    """Why the request's body framing cannot be trusted (a 400 reason), or None.

    The reader already answers conflicting Content-Length values (400) and any coding
    but ``chunked`` (501); left here: Transfer-Encoding in an HTTP/1.0 request, which
    RFC 9112 §6.1 says to treat as faulty framing (1.0 has no chunked coding).
    """
    if request.http_version == "1.0" and any(name.lower() == "transfer-encoding" for name, _ in request.headers):
        return "Transfer-Encoding in an HTTP/1.0 request: its body framing cannot be trusted"
    return None
