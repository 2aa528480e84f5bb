"""The byte relay on loopback TCP: integrity, half-close, resets, idle timeout,
leftover bytes, counters, backpressure and cancellation."""

import asyncio
import hashlib
import os
import socket
import struct

import pytest

from atlantic.pool.splice import RelayCounters, RelayEnd, relay


def run(coro, timeout=60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tcp_pair():
    """Two connected loopback TCP sockets (non-blocking)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


class Flow:
    """app_peer <-TCP-> [app | relay | upstream] <-TCP-> upstream_peer."""

    def __init__(self):
        self.app_peer, self.app = tcp_pair()
        self.upstream, self.upstream_peer = tcp_pair()

    def close_peers(self):
        self.app_peer.close()
        self.upstream_peer.close()


async def recv_all(sock, limit=1 << 30):
    """Read until EOF; return the bytes (bounded by ``limit``)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) <= limit:
        chunk = await loop.sock_recv(sock, 1 << 18)
        if not chunk:
            return bytes(out)
        out += chunk
    raise AssertionError("more data than expected")


async def recv_exactly(sock, n):
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def abort(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_32_mib_both_ways_with_sha256():
    """32 MiB each way at once arrive intact (sha256) and are counted per direction."""
    size = 32 << 20
    up_data, down_data = os.urandom(size), os.urandom(size)

    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        counters = RelayCounters()
        task = asyncio.create_task(relay(f.app, f.upstream, counters, idle_timeout=30))

        async def send(sock, data):
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

        _, _, got_up, got_down = await asyncio.gather(
            send(f.app_peer, up_data), send(f.upstream_peer, down_data),
            recv_all(f.upstream_peer), recv_all(f.app_peer),
        )
        result = await task
        f.close_peers()
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up_data).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down_data).digest()
        assert result.end is RelayEnd.CLOSED
        assert (result.bytes_up, result.bytes_down) == (size, size)
        assert (counters.bytes_up, counters.bytes_down) == (size, size)
    run(main())


def test_small_pipe_many_partial_cycles():
    """With a one-page pipe, 4 MiB each way still arrive intact (many read/write cycles)."""
    size = 4 << 20
    up_data, down_data = os.urandom(size), os.urandom(size)

    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30, pipe_size=4096))

        async def send(sock, data):
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

        _, _, got_up, got_down = await asyncio.gather(
            send(f.app_peer, up_data), send(f.upstream_peer, down_data),
            recv_all(f.upstream_peer), recv_all(f.app_peer),
        )
        result = await task
        f.close_peers()
        assert got_up == up_data and got_down == down_data
        assert result.end is RelayEnd.CLOSED
    run(main())


@pytest.mark.parametrize("first", ["app", "upstream"])
def test_half_close_keeps_the_other_direction(first):
    """A FIN from one side reaches the other as EOF while the reverse direction keeps flowing."""
    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
        closer, other = (f.app_peer, f.upstream_peer) if first == "app" else (f.upstream_peer, f.app_peer)
        await loop.sock_sendall(closer, b"request")
        closer.shutdown(socket.SHUT_WR)
        assert await recv_all(other) == b"request"  # data, then EOF
        for i in range(3):  # the other direction still flows after the FIN
            await loop.sock_sendall(other, b"reply%d" % i)
            assert await recv_exactly(closer, 6) == b"reply%d" % i
        other.shutdown(socket.SHUT_WR)
        assert await recv_all(closer) == b""
        result = await task
        assert result.end is RelayEnd.CLOSED
        assert result.bytes_up + result.bytes_down == 7 + 18
        f.close_peers()
    run(main())


@pytest.mark.parametrize("side", ["app", "upstream"])
def test_reset_propagates(side):
    """An RST from one side closes the other with an RST (SO_LINGER 0), not a FIN."""
    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
        await loop.sock_sendall(f.app_peer, b"x")
        assert await recv_exactly(f.upstream_peer, 1) == b"x"
        resetter, victim = (f.app_peer, f.upstream_peer) if side == "app" else (f.upstream_peer, f.app_peer)
        abort(resetter)
        result = await task
        assert result.end is (RelayEnd.APP_RESET if side == "app" else RelayEnd.UPSTREAM_RESET)
        with pytest.raises(ConnectionResetError):
            await recv_all(victim)
        victim.close()
    run(main())


def test_write_to_dead_side_resets_the_source():
    """When the destination has gone (EPIPE/RST on write) the source gets an RST."""
    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
        f.upstream_peer.close()  # full close: FIN now, RST on the next write
        assert await recv_all(f.app_peer) == b""  # the FIN is relayed as a half-close
        for _ in range(50):  # bounded: keep writing until the relay notices the dead side
            if task.done():
                break
            try:
                await loop.sock_sendall(f.app_peer, b"y" * 1000)
            except OSError:
                break
            await asyncio.sleep(0.01)
        result = await asyncio.wait_for(task, 5)
        assert result.end is RelayEnd.UPSTREAM_RESET
        f.app_peer.close()
    run(main())


def test_idle_timeout_resets_both_sides():
    """No bytes either way for idle_timeout seconds resets both sides."""
    async def main():
        f = Flow()
        result = await relay(f.app, f.upstream, idle_timeout=0.2)
        assert result.end is RelayEnd.IDLE_TIMEOUT
        for peer in (f.app_peer, f.upstream_peer):
            with pytest.raises(ConnectionResetError):
                await recv_all(peer)
        f.close_peers()
    run(main())


def test_activity_postpones_idle_timeout():
    """Traffic keeps a flow alive past idle_timeout; silence then ends it."""
    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=0.5))
        for i in range(8):  # 8 x 0.15 s = 1.2 s of activity, well past 0.5 s
            await asyncio.sleep(0.15)
            assert not task.done(), i
            await loop.sock_sendall(f.app_peer, b"k")
            assert await recv_exactly(f.upstream_peer, 1) == b"k"
        result = await task
        assert result.end is RelayEnd.IDLE_TIMEOUT and result.bytes_up == 8
        f.close_peers()
    run(main())


def test_leftover_bytes_go_first_and_are_counted():
    """to_upstream / to_app (a CONNECT's leftover) are delivered before relayed bytes, and counted."""
    async def main():
        loop = asyncio.get_running_loop()
        f = Flow()
        counters = RelayCounters(bytes_up=100, bytes_down=200)  # shared, already in use
        task = asyncio.create_task(
            relay(f.app, f.upstream, counters, idle_timeout=30, to_upstream=b"CLIENTHELLO|",
                  to_app=b"HEAD-LEFTOVER|")
        )
        await loop.sock_sendall(f.app_peer, b"more-up")
        await loop.sock_sendall(f.upstream_peer, b"more-down")
        f.app_peer.shutdown(socket.SHUT_WR)
        f.upstream_peer.shutdown(socket.SHUT_WR)
        got_up, got_down = await asyncio.gather(recv_all(f.upstream_peer), recv_all(f.app_peer))
        result = await task
        assert got_up == b"CLIENTHELLO|more-up"
        assert got_down == b"HEAD-LEFTOVER|more-down"
        assert (result.bytes_up, result.bytes_down) == (19, 23)
        assert (counters.bytes_up, counters.bytes_down) == (119, 223)
        f.close_peers()
    run(main())


def test_backpressure_bounds_buffered_bytes():
    """A destination that never reads stops the relay reading: the sender blocks early."""
    async def main():
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
        chunk = b"z" * 65536
        accepted = 0
        for _ in range(2000):  # bounded: at most 128 MiB offered
            try:
                accepted += f.app_peer.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)  # let the relay move what it can
                try:
                    accepted += f.app_peer.send(chunk)
                except BlockingIOError:
                    break
            await asyncio.sleep(0)
        # Socket buffers (a few MiB each) plus one 1 MiB pipe; never the whole offer.
        assert accepted < 64 << 20
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        f.close_peers()
    run(main())


def test_cancel_resets_both_sides():
    """Cancelling the relay (daemon shutdown) closes both sockets with an RST."""
    async def main():
        f = Flow()
        task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert f.app.fileno() == -1 and f.upstream.fileno() == -1
        for peer in (f.app_peer, f.upstream_peer):
            with pytest.raises(ConnectionResetError):
                await recv_all(peer)
        f.close_peers()
    run(main())


def test_no_fd_leak():
    """After many short flows the relay leaves no pipe or socket open."""
    async def main():
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(30):
            f = Flow()
            task = asyncio.create_task(relay(f.app, f.upstream, idle_timeout=30))
            f.app_peer.shutdown(socket.SHUT_WR)
            f.upstream_peer.shutdown(socket.SHUT_WR)
            await task
            f.close_peers()
        assert len(os.listdir("/proc/self/fd")) == before
    run(main())


def test_bad_idle_timeout():
    """A non-positive idle timeout is refused."""
    async def main():
        f = Flow()
        try:
            with pytest.raises(ValueError):
                await relay(f.app, f.upstream, idle_timeout=0)
        finally:
            for s in (f.app, f.upstream):
                s.close()
            f.close_peers()
    run(main())
