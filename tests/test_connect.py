"""CONNECT: request bytes, the sans-I/O response parser, status classification,
and open_tunnel against small real peers on loopback (a scripted CONNECT proxy
with basic auth, an echo server)."""

import asyncio
import base64
import os
import socket
import time

import pytest

from atlantic.pool.connect import (
    ConnectResponse,
    ConnectResponseParser,
    basic_authorization,
    build_connect_request,
    format_authority,
    raise_for_status,
)
from atlantic.pool.errors import (
    RemoteProtocolError,
    UpstreamAuthError,
    UpstreamNotSupportedError,
    UpstreamRefusedError,
    UpstreamStatusError,
    UpstreamTargetError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from atlantic.forwarder.tunnel import open_tunnel
from atlantic.pool.upstream import DIRECT, parse_upstream

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


# -- open_tunnel against real loopback peers


def run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


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


async def roundtrip(sock, data, leftover=b""):
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    got = bytearray(leftover)
    want = len(leftover) + len(data)
    while len(got) < want:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk
        got += chunk
    return bytes(got)


def test_tunnel_through_proxy_with_auth():
    """A 200 from an authenticating proxy gives a socket that reaches the target."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy().start()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        tunnel = await open_tunnel(up, "127.0.0.1", eport, mark=None, timeout=5)
        try:
            assert tunnel.target == f"127.0.0.1:{eport}" and tunnel.leftover == b""
            assert await roundtrip(tunnel.sock, b"ping") == b"ping"
            assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{eport} HTTP/1.1\r\n".encode())
        finally:
            tunnel.sock.close()
            echo.close()
            proxy.server.close()
    run(main())


def test_leftover_after_head_is_not_lost():
    """Bytes the proxy sends right after its 200 head reach the caller before the rest."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy(leftover=b"EARLY").start()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        tunnel = await open_tunnel(up, "127.0.0.1", eport, mark=None, timeout=5)
        try:
            got = await roundtrip(tunnel.sock, b"later", tunnel.leftover)
            assert got == b"EARLYlater"
        finally:
            tunnel.sock.close()
            echo.close()
            proxy.server.close()
    run(main())


def test_wrong_password_is_auth_error_without_the_password():
    """A 407 becomes UpstreamAuthError whose message names the proxy but not the password."""
    async def main():
        proxy = await FakeProxy().start()
        up = parse_upstream(f"http://alice:wrongpass@127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(UpstreamAuthError) as info:
                await open_tunnel(up, "example.com", 443, mark=None, timeout=5)
        finally:
            proxy.server.close()
        assert "wrongpass" not in str(info.value)
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
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(error) as info:
                await open_tunnel(up, "target.example", 443, mark=None, timeout=5)
        finally:
            proxy.server.close()
        assert "target.example:443" in str(info.value) and "\n" not in str(info.value)
        assert "hunter2" not in str(info.value)
    run(main())


def test_proxy_cannot_reach_target_is_target_error():
    """The proxy's own 502 (target port closed) is UpstreamTargetError."""
    async def main():
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        proxy = await FakeProxy().start()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(UpstreamTargetError):
                await open_tunnel(up, "127.0.0.1", port, mark=None, timeout=5)
        finally:
            proxy.server.close()
    run(main())


def test_dead_proxy_port_fails_fast():
    """A closed proxy port raises UpstreamUnreachableError at once, not after the timeout."""
    async def main():
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        up = parse_upstream(f"http://u:p@127.0.0.1:{port}")
        start = time.monotonic()
        with pytest.raises(UpstreamUnreachableError) as info:
            await open_tunnel(up, "example.com", 443, mark=None, timeout=10)
        assert time.monotonic() - start < 5  # refused, not timed out
        assert f"127.0.0.1:{port}" in str(info.value) and "refused" in str(info.value).lower()
    run(main())


def test_silent_proxy_times_out():
    """A proxy that accepts but never answers raises UpstreamTimeoutError after the timeout."""
    async def main():
        proxy = await FakeProxy(answer=b"silence").start()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        try:
            with pytest.raises(UpstreamTimeoutError, match="did not answer CONNECT"):
                await open_tunnel(up, "example.com", 443, mark=None, timeout=0.3)
        finally:
            proxy.server.close()
    run(main())


def test_unresolvable_proxy_host():
    """A proxy host name that does not resolve is UpstreamUnreachableError."""
    async def main():
        up = parse_upstream("http://u:p@no-such-host.invalid:3128")
        with pytest.raises(UpstreamUnreachableError, match="no-such-host.invalid"):
            await open_tunnel(up, "example.com", 443, mark=None, timeout=5)
    run(main())


def test_https_proxy_not_supported_yet():
    """https:// upstreams parse but are refused at tunnel time with a clear message."""
    async def main():
        up = parse_upstream("https://u:secret@127.0.0.1:8443")
        with pytest.raises(UpstreamNotSupportedError, match="not supported yet") as info:
            await open_tunnel(up, "example.com", 443, mark=None, timeout=1)
        assert "secret" not in str(info.value)
    run(main())


@pytest.mark.parametrize("mark, expected", [(None, 0), (0, 0), (0x2A7, 0x2A7)])
def test_direct_tunnel_and_mark(mark, expected):
    """Direct mode connects to the target itself; SO_MARK is set only for a non-zero mark."""
    async def main():
        echo, eport = await echo_server()
        try:
            tunnel = await open_tunnel(DIRECT, "127.0.0.1", eport, mark=mark, timeout=5)
            try:
                assert tunnel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == expected
                assert await roundtrip(tunnel.sock, b"hi") == b"hi"
            finally:
                tunnel.sock.close()
        finally:
            echo.close()
    run(main())


def test_proxy_socket_is_marked():
    """The socket to the proxy carries the mark too."""
    async def main():
        echo, eport = await echo_server()
        proxy = await FakeProxy().start()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{proxy.port}")
        tunnel = await open_tunnel(up, "127.0.0.1", eport, mark=0x77, timeout=5)
        try:
            assert tunnel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x77
        finally:
            tunnel.sock.close()
            echo.close()
            proxy.server.close()
    run(main())


def test_direct_dead_target():
    """Direct mode to a closed port raises UpstreamUnreachableError naming the target."""
    async def main():
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        with pytest.raises(UpstreamUnreachableError, match=f"127.0.0.1:{port}"):
            await open_tunnel(DIRECT, "127.0.0.1", port, mark=None, timeout=5)
    run(main())


# -- a real Squid on loopback (optional: skipped when squid is not installed)

SQUID = "/usr/sbin/squid"
NCSA = "/usr/lib/squid/basic_ncsa_auth"


@pytest.fixture(scope="module")
def squid_port():
    """A private Squid with basic auth on a loopback port; killed by PID afterwards."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    if not (os.path.exists(SQUID) and os.path.exists(NCSA) and shutil.which("htpasswd")):
        pytest.skip("squid or htpasswd not installed")
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
                pytest.skip(f"squid exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.skip("squid did not start listening within 15 s")
        yield port
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # by PID, our own child
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_squid_tunnel_ok(squid_port):
    """Through a real Squid with basic auth, CONNECT opens a working tunnel."""
    async def main():
        echo, eport = await echo_server()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{squid_port}")
        try:
            tunnel = await open_tunnel(up, "127.0.0.1", eport, mark=0x11, timeout=10)
            try:
                assert await roundtrip(tunnel.sock, b"via squid", tunnel.leftover) == b"via squid"
            finally:
                tunnel.sock.close()
        finally:
            echo.close()
    run(main())


@pytest.mark.parametrize(
    "creds, target_port, error",
    [("alice:wrong", 443, UpstreamAuthError), ("alice:hunter2", 9, UpstreamRefusedError),
     ("alice:hunter2", "dead", UpstreamTargetError)],
)
def test_squid_failures(squid_port, creds, target_port, error):
    """Real Squid answers map to auth (407), refused (403) and target (503) errors."""
    async def main():
        port = target_port
        if port == "dead":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        up = parse_upstream(f"http://{creds}@127.0.0.1:{squid_port}")
        with pytest.raises(error) as info:
            await open_tunnel(up, "127.0.0.1", port, mark=None, timeout=10)
        assert "hunter2" not in str(info.value) and "wrong" not in str(info.value)
    run(main())


def test_squid_tunnel_relayed_end_to_end(squid_port):
    """app <-> relay <-> Squid tunnel <-> echo: 4 MiB round trip intact, then a clean close."""
    from atlantic.pool.splice import RelayEnd, relay

    async def main():
        loop = asyncio.get_running_loop()
        echo, eport = await echo_server()
        up = parse_upstream(f"http://alice:hunter2@127.0.0.1:{squid_port}")
        with socket.create_server(("127.0.0.1", 0)) as listener:
            app_peer = socket.create_connection(listener.getsockname())
            app, _ = listener.accept()
        app_peer.setblocking(False)
        try:
            tunnel = await open_tunnel(up, "127.0.0.1", eport, mark=None, timeout=10)
            task = asyncio.create_task(relay(app, tunnel, idle_timeout=30))
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
    """Without CAP_NET_ADMIN, setting the mark fails with one clear line (an UpstreamError)."""
    from atlantic.pool.errors import MarkPermissionError, UpstreamError

    real = socket.socket.setsockopt

    def setsockopt(self, level, opt, value):
        if opt == socket.SO_MARK:
            raise PermissionError(1, "Operation not permitted")
        return real(self, level, opt, value)

    monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)

    async def main():
        with pytest.raises(MarkPermissionError, match="CAP_NET_ADMIN") as info:
            await open_tunnel(DIRECT, "127.0.0.1", 9, mark=1, timeout=5)
        assert isinstance(info.value, UpstreamError) and isinstance(info.value, PermissionError)
    run(main())
