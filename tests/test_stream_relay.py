"""relay_stream: the socket <-> ByteStream relay used for HTTP/2 tunnels and TLS to the proxy."""

from __future__ import annotations

import asyncio
import socket

from atlantic.forwarder.stream_relay import relay_stream


class QueueStream:
    """A ByteStream whose far end is a test: bytes written are collected, reads come from a queue."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.written = bytearray()
        self.eof = False
        self.closed = None

    async def read(self, max_bytes: int = 262144) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        self.written += data

    async def write_eof(self) -> None:
        self.eof = True

    async def aclose(self, *, reset: bool = False) -> None:
        self.closed = "reset" if reset else "closed"


def test_half_closed_tunnel_ends_after_the_grace_period():
    """The app closes its side and the far end never does: the stream is reset after the grace period."""

    async def main():
        app, ours = socket.socketpair()
        ours.setblocking(False)
        stream = QueueStream()
        app.sendall(b"hello")
        app.shutdown(socket.SHUT_WR)
        result = await asyncio.wait_for(
            relay_stream(ours, stream, first_up=b">", half_close_timeout=0.2, idle_timeout=30), 5)
        app.close()
        ours.close()
        return result, stream

    result, stream = asyncio.run(main())
    assert result.reason == "half-close timeout"
    assert bytes(stream.written) == b">hello" and stream.eof and stream.closed == "reset"


def test_far_end_closing_after_app_half_close_ends_cleanly():
    """Within the grace period, the far end's reply and close end the relay cleanly, bytes intact."""

    async def main():
        app, ours = socket.socketpair()
        ours.setblocking(False)
        stream = QueueStream()
        app.sendall(b"request")
        app.shutdown(socket.SHUT_WR)
        task = asyncio.create_task(relay_stream(ours, stream, half_close_timeout=5, idle_timeout=30))
        await asyncio.sleep(0.05)
        await stream.incoming.put(b"reply")
        await stream.incoming.put(b"")
        result = await asyncio.wait_for(task, 5)
        app.settimeout(2)
        got = b""
        while chunk := app.recv(100):
            got += chunk
        app.close()
        ours.close()
        return result, stream, got

    result, stream, got = asyncio.run(main())
    assert result.reason == "closed" and stream.closed == "closed"
    assert got == b"reply" and bytes(stream.written) == b"request"
