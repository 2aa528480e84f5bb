"""CONNECT: request bytes, the sans-I/O response parser, status classification, and
tunnels opened by the pool (``UpstreamPool.open_tunnel``) against small real peers on
loopback (a scripted CONNECT proxy with basic auth, an echo server, a real Squid)."""

import asyncio
import base64
import os
import socket
import time

import pytest
from atlantic_lab import lab_unavailable

from atlantic.pool.connect import (
    ConnectResponse,
    ConnectResponseParser,
    basic_authorization,
    build_connect_request,
    format_authority,
    raise_for_status,
)
from atlantic.pool.errors import (
    MarkPermissionError,
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRefusedError,
    UpstreamStatusError,
    UpstreamTargetError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from atlantic.pool.pool import UpstreamPool

# -- request bytes


def test_request_bytes_with_auth():
    """CONNECT line, Host and Proxy-Authorization (Basic, UTF-8) end with a blank line."""
    raw = build_connect_request("example.com", 443, username="ü", password="p:w")
    token = base64.b64encode("ü:p:w".encode()).decode()
    assert raw == (
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n"
    ).encode()


def test_request_without_auth_and_with_extra_headers():
    """No credentials means no Proxy-Authorization; extra headers follow in order."""
    raw = build_connect_request("1.2.3.4", 80, extra_headers=[("X-Session", "abc"), ("A", "b")])
    assert raw == b"CONNECT 1.2.3.4:80 HTTP/1.1\r\nHost: 1.2.3.4:80\r\nX-Session: abc\r\nA: b\r\n\r\n"


def test_ipv6_target_in_brackets():
    """An IPv6 literal target is bracketed in the CONNECT line and Host."""
    assert format_authority("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert build_connect_request("::1", 22).startswith(b"CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n")


@pytest.mark.parametrize("name, value", [("X-A", "v\r\nInjected: 1"), ("Bad Name", "v"), ("X:", "v")])
def test_header_injection_is_refused(name, value):
    """Header names must be tokens and values may not carry CR/LF."""
    with pytest.raises(ValueError):
        build_connect_request("h", 1, extra_headers=[(name, value)])


@pytest.mark.parametrize("host, port", [("h", 0), ("h", 70000), ("", 1), ("a b", 1), ("a\r\n", 1)])
def test_bad_targets_are_refused(host, port):
    """Bad target hosts and ports never reach the wire."""
    with pytest.raises(ValueError):
        format_authority(host, port)


def test_basic_authorization_without_password():
    """A user with no password authenticates as 'user:'."""
    assert basic_authorization("u", None) == "Basic " + base64.b64encode(b"u:").decode()


# -- response parser

HEAD = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\nX-Empty:\r\n\r\n"


def feed_bytewise(parser, data):
    results = [parser.feed(data[i:i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    return results[-1]


def test_parser_byte_at_a_time():
    """Fed one byte at a time, the parser returns None until the blank line, then the head."""
    resp = feed_bytewise(ConnectResponseParser(), HEAD)
    assert resp == ConnectResponse(200, "Connection established", (("Via", "squid"), ("X-Empty", "")))
    assert resp.is_success and resp.header("via") == "squid" and resp.header("nope") is None


def test_parser_keeps_leftover_bytes():
    """Bytes after the head come back as leftover, however they were split."""
    data = HEAD + b"\x16\x03\x01hello"
    for cut in range(len(data) + 1):
        parser = ConnectResponseParser()
        first = parser.feed(data[:cut])
        if first is not None:  # complete already: the rest is plain app data
            leftover = first.leftover + data[cut:]
        else:
            resp = parser.feed(data[cut:])
            assert resp is not None, cut
            leftover = resp.leftover
        assert leftover == b"\x16\x03\x01hello", cut


def test_parser_accepts_bare_lf_and_no_reason():
    """Bare LF line endings and a missing reason phrase are tolerated."""
    resp = ConnectResponseParser().feed(b"HTTP/1.0 200\nA: b\n\nxy")
    assert (resp.status, resp.reason, resp.headers, resp.leftover) == (200, "", (("A", "b"),), b"xy")


def test_parser_skips_interim_responses():
    """A 100 Continue before the real answer is skipped."""
    resp = feed_bytewise(ConnectResponseParser(), b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD)
    assert resp.status == 200


def test_parser_done_refuses_more():
    """Feeding after completion is a caller bug and says so."""
    parser = ConnectResponseParser()
    assert parser.feed(HEAD) is not None and parser.is_done
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n",
    ],
)
def test_parser_rejects_malformed_heads(data):
    """Malformed status lines and header lines raise RemoteProtocolError (also byte-wise)."""
    with pytest.raises(RemoteProtocolError):
        ConnectResponseParser().feed(data)
    with pytest.raises(RemoteProtocolError):
        feed_bytewise(ConnectResponseParser(), data)


def test_parser_fails_fast_on_non_http():
    """A peer not speaking HTTP fails on its first bytes, not at the size limit."""
    with pytest.raises(RemoteProtocolError, match="not an HTTP response"):
        ConnectResponseParser().feed(b"\x16\x03\x01")


def test_parser_bounds_head_size():
    """A head that never ends is cut at max_head_size."""
    parser = ConnectResponseParser(max_head_size=1024)
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(RemoteProtocolError, match="larger than 1024"):
        for _ in range(100):
            parser.feed(b"X-Pad: " + b"a" * 50 + b"\r\n")


def test_parser_eof():
    """EOF before a complete head is a RemoteProtocolError, empty or mid-way."""
    with pytest.raises(RemoteProtocolError, match="without a response"):
        ConnectResponseParser().eof()
    parser = ConnectResponseParser()
    parser.feed(b"HTTP/1.1 200")
    with pytest.raises(RemoteProtocolError, match="mid-way"):
        parser.eof()


# -- classification

PROXY = "http://alice:***@proxy:3128"


@pytest.mark.parametrize(
    "status, error",
    [(407, UpstreamAuthError), (403, UpstreamRefusedError), (502, UpstreamTargetError),
     (503, UpstreamTargetError), (504, UpstreamTargetError), (400, UpstreamStatusError),
     (500, UpstreamStatusError)],
)
def test_status_classification(status, error):
    """Each failure status maps to the error that says who is at fault, naming proxy and target."""
    with pytest.raises(error) as info:
        raise_for_status(ConnectResponse(status, "Reason", ()), proxy=PROXY, target="t.example:443")
    message = str(info.value)
    assert PROXY in message and "t.example:443" in message and "\n" not in message
    assert info.value.status == status


@pytest.mark.parametrize("status", [200, 201, 299])
def test_any_2xx_opens_the_tunnel(status):
    """Any 2xx answer to CONNECT means the tunnel is open."""
    raise_for_status(ConnectResponse(status, "", ()), proxy=PROXY, target="t:1")


# -- tunnels through the pool against real loopback peers


def run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pool(url, *, timeout=5.0, mark=None):
    """The production path for tunnels: a pool with no warm connections (each tunnel is a
    fresh CONNECT), ``timeout`` bounding connect and handshake."""
    return UpstreamPool(url, warm_tunnels=0, connect_timeout=timeout, mark=mark)


def closed_port():
    """A loopback port with nothing listening."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        return dead.getsockname()[1]


async def echo_server():
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class FakeProxy:
    """A small CONNECT proxy: checks Basic auth, answers as scripted, relays on 200."""

    def __init__(self, answer=None, user="alice", password="hunter2", leftover=b""):
        self.answer = answer  # raw head to send instead of the normal flow, or None
        self.expected = basic_authorization(user, password)
        self.leftover = leftover
        self.requests = []

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.answer is not None:
                if self.answer != b"silence":
                    writer.write(self.answer)
                    await writer.drain()
                else:
                    await asyncio.sleep(5)
                return
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            if headers.get("Proxy-Authorization") != self.expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=x\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            host, port = lines[0].split()[1].rsplit(":", 1)
            try:
                up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.leftover)
            await writer.drain()

            async def pump(r, w):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
                w.close()
            await asyncio.gather(pump(reader, up_w), pump(up_r, writer), return_exceptions=True)
        finally:
            writer.close()


async def roundtrip(stream, data, want=None):
    """Write ``data`` to a tunnel stream and read until ``want`` bytes (default: as many) came back."""
    await stream.write(data)
    want = len(data) if want is None else want
    got = bytearray()
    while len(got) < want:
        chunk = await stream.read(65536)
        assert chunk
        got += chunk
    return bytes(got)


def test_tunnel_through_proxy_with_auth():
    """A 200 from an authenticating proxy gives a stream that reaches the target."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy().start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}") as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                try:
                    assert await roundtrip(stream, b"ping") == b"ping"
                finally:
                    await stream.aclose()
            assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{eport} HTTP/1.1\r\n".encode())
            assert f"Proxy-Authorization: {proxy.expected}\r\n".encode() in proxy.requests[0]
        finally:
            echo.close()
            proxy.server.close()
    run(main())


def test_leftover_after_head_is_not_lost():
    """Bytes the proxy sends right after its 200 head reach the caller before the rest."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy(leftover=b"EARLY").start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}") as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                try:
                    assert await roundtrip(stream, b"later", want=10) == b"EARLYlater"
                finally:
                    await stream.aclose()
        finally:
            echo.close()
            proxy.server.close()
    run(main())


def test_wrong_password_is_auth_error_without_the_password():
    """A 407 becomes UpstreamAuthError whose message names the proxy but not the password."""
    async def main():
        proxy = await FakeProxy().start()
        try:
            async with pool(f"http://alice:wrongpass@127.0.0.1:{proxy.port}") as p:
                with pytest.raises(UpstreamAuthError) as info:
                    await p.open_tunnel("example.com", 443)
        finally:
            proxy.server.close()
        assert "wrongpass" not in str(info.value) and info.value.status == 407
        assert f"127.0.0.1:{proxy.port}" in str(info.value) and "example.com:443" in str(info.value)
    run(main())


@pytest.mark.parametrize(
    "answer, error",
    [
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", UpstreamRefusedError),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", UpstreamTargetError),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", RemoteProtocolError),
        (b"garbage\r\n\r\n", RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\n", RemoteProtocolError),  # then close: truncated head
        (b"", RemoteProtocolError),  # close without answering
    ],
)
def test_scripted_proxy_answers(answer, error):
    """Scripted 403/503/malformed/truncated answers raise the matching one-line error."""
    async def main():
        proxy = await FakeProxy(answer=answer).start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}") as p:
                with pytest.raises(error) as info:
                    await p.open_tunnel("target.example", 443)
        finally:
            proxy.server.close()
        assert "target.example:443" in str(info.value) and "\n" not in str(info.value)
        assert "hunter2" not in str(info.value)
    run(main())


def test_proxy_cannot_reach_target_is_target_error():
    """The proxy's own 502 (target port closed) is UpstreamTargetError."""
    async def main():
        port = closed_port()
        proxy = await FakeProxy().start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}") as p:
                with pytest.raises(UpstreamTargetError) as info:
                    await p.open_tunnel("127.0.0.1", port)
        finally:
            proxy.server.close()
        assert info.value.status == 502 and f"127.0.0.1:{port}" in str(info.value)
    run(main())


def test_dead_proxy_port_is_refused_not_timed_out():
    """A closed proxy port raises UpstreamUnreachableError saying the connection was refused
    (not UpstreamTimeoutError: the refusal is reported as such, not waited out)."""
    async def main():
        port = closed_port()
        async with pool(f"http://u:p@127.0.0.1:{port}", timeout=10) as p:
            with pytest.raises(UpstreamUnreachableError) as info:
                await p.open_tunnel("example.com", 443)
        assert not isinstance(info.value, UpstreamTimeoutError)
        assert isinstance(info.value.__context__, ConnectionRefusedError)
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message and "Connection refused" in message and "\n" not in message
    run(main())


def test_silent_proxy_times_out():
    """A proxy that accepts but never answers raises UpstreamTimeoutError after the timeout."""
    async def main():
        proxy = await FakeProxy(answer=b"silence").start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}", timeout=0.3) as p:
                with pytest.raises(UpstreamTimeoutError, match="did not answer CONNECT example.com:443"):
                    await p.open_tunnel("example.com", 443)
        finally:
            proxy.server.close()
    run(main())


def test_unresolvable_proxy_host():
    """A proxy host name that does not resolve is UpstreamUnreachableError naming it."""
    async def main():
        async with pool("http://u:p@no-such-host.invalid:3128") as p:
            with pytest.raises(UpstreamUnreachableError, match="no-such-host.invalid") as info:
                await p.open_tunnel("example.com", 443)
        assert "\n" not in str(info.value)
    run(main())


@pytest.mark.parametrize("mark, expected", [(None, 0), (0x2A7, 0x2A7)])
def test_direct_tunnel_and_mark(mark, expected):
    """Direct mode connects to the target itself; its socket carries the pool's mark, if any."""
    async def main():
        echo, eport = await echo_server()
        try:
            async with pool("direct", mark=mark) as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                try:
                    assert stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == expected
                    assert await roundtrip(stream, b"hi") == b"hi"
                finally:
                    await stream.aclose()
        finally:
            echo.close()
    run(main())


def test_proxy_socket_is_marked():
    """The socket to the proxy carries the mark too."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy().start()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{proxy.port}", mark=0x77) as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                try:
                    assert stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x77
                finally:
                    await stream.aclose()
        finally:
            echo.close()
            proxy.server.close()
    run(main())


def test_direct_dead_target():
    """Direct mode to a closed port raises UpstreamUnreachableError naming the target."""
    async def main():
        port = closed_port()
        async with pool("direct") as p:
            with pytest.raises(UpstreamUnreachableError, match=f"127.0.0.1:{port}"):
                await p.open_tunnel("127.0.0.1", port)
    run(main())


# -- a real Squid on loopback (lab_local: needs root, squid and htpasswd)

SQUID = "/usr/sbin/squid"
NCSA = "/usr/lib/squid/basic_ncsa_auth"


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path) as f:
            return " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def squid_port():
    """A private Squid with basic auth on a loopback port; killed by PID afterwards.

    Missing programs skip (or fail under ATLANTIC_LAB=require); a Squid that does not
    start is a failure.
    """
    import pwd
    import shutil
    import subprocess
    import tempfile

    if not (os.path.exists(SQUID) and os.path.exists(NCSA) and shutil.which("htpasswd")):
        lab_unavailable("needs squid and htpasswd")
    workdir = tempfile.mkdtemp(prefix="atlt-fwd-squid-")
    proc = None
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        subprocess.run(["htpasswd", "-bc", f"{workdir}/passwd", "alice", "hunter2"],
                       check=True, capture_output=True)
        conf = f"""
http_port 127.0.0.1:{port}
pid_filename {workdir}/squid.pid
cache_log {workdir}/cache.log
access_log {workdir}/access.log
netdb_filename none
coredump_dir {workdir}
cache deny all
shutdown_lifetime 0 seconds
auth_param basic program {NCSA} {workdir}/passwd
auth_param basic children 2 startup=1
acl authed proxy_auth REQUIRED
acl port9 port 9
http_access deny port9
http_access allow authed
http_access deny all
"""
        with open(f"{workdir}/squid.conf", "w") as f:
            f.write(conf)
        proxy_user = pwd.getpwnam("proxy")
        os.chmod(workdir, 0o755)
        for name in os.listdir(workdir):
            os.chmod(f"{workdir}/{name}", 0o644)
        os.chown(workdir, proxy_user.pw_uid, proxy_user.pw_gid)
        proc = subprocess.Popen([SQUID, "-N", "-f", f"{workdir}/squid.conf"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # bounded wait for the port
            if proc.poll() is not None:
                pytest.fail(f"squid exited with {proc.returncode}: {_tail(f'{workdir}/cache.log')}",
                            pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"squid did not start listening within 15 s: {_tail(f'{workdir}/cache.log')}",
                        pytrace=False)
        yield port
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # by PID, our own child
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.lab_local
def test_squid_tunnel_ok(squid_port):
    """Through a real Squid with basic auth, CONNECT opens a working tunnel (marked socket)."""
    async def main():
        echo, eport = await echo_server()
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{squid_port}", timeout=10, mark=0x11) as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                try:
                    assert stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x11
                    assert await roundtrip(stream, b"via squid") == b"via squid"
                finally:
                    await stream.aclose()
        finally:
            echo.close()
    run(main())


@pytest.mark.lab_local
@pytest.mark.parametrize(
    "creds, target_port, error",
    [("alice:wrong", 443, UpstreamAuthError), ("alice:hunter2", 9, UpstreamRefusedError),
     ("alice:hunter2", "dead", UpstreamTargetError)],
)
def test_squid_failures(squid_port, creds, target_port, error):
    """Real Squid answers map to auth (407), refused (403) and target (503) errors."""
    async def main():
        port = closed_port() if target_port == "dead" else target_port
        async with pool(f"http://{creds}@127.0.0.1:{squid_port}", timeout=10) as p:
            with pytest.raises(error) as info:
                await p.open_tunnel("127.0.0.1", port)
        assert "hunter2" not in str(info.value) and "wrong" not in str(info.value)
    run(main())


@pytest.mark.lab_local
def test_squid_tunnel_relayed_end_to_end(squid_port):
    """app <-> relay <-> Squid tunnel <-> echo: 4 MiB round trip intact, then a clean close."""
    from atlantic.pool.splice import RelayEnd, relay

    async def main():
        loop = asyncio.get_running_loop()
        echo, eport = await echo_server()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            app_peer = socket.create_connection(listener.getsockname())
            app, _ = listener.accept()
        app_peer.setblocking(False)
        try:
            async with pool(f"http://alice:hunter2@127.0.0.1:{squid_port}", timeout=10) as p:
                stream = await p.open_tunnel("127.0.0.1", eport)
                upstream, leftover = stream.detach()  # a plain socket: spliced, as the dispatcher does
                task = asyncio.create_task(relay(app, upstream, idle_timeout=30, to_app=leftover))
                data = os.urandom(4 << 20)

                async def receive(n):
                    got = bytearray()
                    while len(got) < n and (chunk := await loop.sock_recv(app_peer, 1 << 18)):
                        got += chunk
                    return bytes(got)

                # Squid 5.7 tears the whole tunnel down on a client half-close, losing
                # bytes still in flight back: so read everything before sending the FIN.
                _, got = await asyncio.gather(loop.sock_sendall(app_peer, data), receive(len(data)))
                assert len(got) == len(data) and got == data
                app_peer.shutdown(socket.SHUT_WR)
                assert await receive(1) == b""
                result = await task
                assert result.end is RelayEnd.CLOSED and result.bytes_up == len(data)
        finally:
            app_peer.close()
            echo.close()
    run(main())


def test_mark_without_cap_net_admin(monkeypatch):
    """Without CAP_NET_ADMIN, setting the mark fails the tunnel with one line saying what to do."""
    real = socket.socket.setsockopt

    def setsockopt(self, level, opt, value):
        if opt == socket.SO_MARK:
            raise PermissionError(1, "Operation not permitted")
        return real(self, level, opt, value)

    monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)

    async def main():
        async with pool("direct", mark=1) as p:
            with pytest.raises(MarkPermissionError, match="CAP_NET_ADMIN") as info:
                await p.open_tunnel("127.0.0.1", 9)
        assert isinstance(info.value, UpstreamError)
        assert "run atlantic up as root" in str(info.value) and "\n" not in str(info.value)
    run(main())
