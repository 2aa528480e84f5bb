"""Open a tunnel to host:port through an upstream: the async adapter over connect.py.

``direct``: a TCP connection to the target itself. ``http://``: a TCP
connection to the proxy, ``CONNECT host:port``, response head read with a
bounded size and time. Either way the socket carries ``SO_MARK`` (when ``mark``
is non-zero) so policy routing sends it out the main table, not back into the
TUN. The result is a connected non-blocking socket plus any bytes the proxy
already sent past its response head; hand both to :func:`.relay.relay`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from .connect import (
    ConnectResponse,
    ConnectResponseParser,
    build_connect_request,
    format_authority,
    raise_for_status,
)
from .errors import (
    MarkPermissionError,
    RemoteProtocolError,
    UpstreamNotSupportedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from .upstream import Upstream, UpstreamKind

__all__ = ["Tunnel", "open_tunnel", "connect_marked"]

_RECV_SIZE = 4096  # a CONNECT head is ~200 bytes; leftover beyond this waits in the kernel


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An open tunnel: a connected non-blocking socket and bytes for the app."""

    sock: socket.socket
    leftover: bytes
    upstream: Upstream
    target: str  # "host:port" as sent in CONNECT


async def open_tunnel(
    upstream: Upstream,
    host: str,
    port: int,
    *,
    mark: int | None,
    timeout: float,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Tunnel:
    """Open a tunnel to ``host:port``; connect and handshake share one ``timeout``.

    Raises :class:`UpstreamUnreachableError` (refused, unreachable, timed out),
    :class:`UpstreamTimeoutError` (proxy silent after accepting),
    :class:`UpstreamAuthError` / ``RefusedError`` / ``TargetError`` /
    ``StatusError`` from the proxy's answer, :class:`RemoteProtocolError` for
    a malformed answer, :class:`UpstreamNotSupportedError` for https://,
    :class:`MarkPermissionError` when SO_MARK needs privileges we lack.
    """
    target = format_authority(host, port)
    if upstream.kind is UpstreamKind.HTTPS:
        raise UpstreamNotSupportedError(
            f"upstream {upstream.redacted()}: https:// proxies are not supported yet; "
            "use an http:// proxy URL"
        )
    if upstream.is_direct:
        who, peer_host, peer_port = f"{target} (direct)", host, port
    else:
        who, peer_host, peer_port = f"proxy {upstream.redacted()}", upstream.host, upstream.port
    loop = asyncio.get_running_loop()
    sock = None
    phase = "connect"
    try:
        async with asyncio.timeout(timeout):
            sock = await connect_marked(peer_host, peer_port, mark=mark, who=who)
            if upstream.is_direct:
                tunnel, sock = Tunnel(sock, b"", upstream, target), None
                return tunnel
            phase = "handshake"
            request = build_connect_request(
                host, port, username=upstream.username, password=upstream.password,
                extra_headers=extra_headers,
            )
            await loop.sock_sendall(sock, request)
            response = await _read_head(loop, sock, who, target)
        raise_for_status(response, proxy=upstream.redacted(), target=target)
        tunnel = Tunnel(sock, response.leftover, upstream, target)
        sock = None  # handed over
        return tunnel
    except TimeoutError:
        if phase == "connect":
            raise UpstreamUnreachableError(
                f"cannot reach {who}: no connection within {timeout:g} s"
            ) from None
        raise UpstreamTimeoutError(
            f"{who} did not answer CONNECT {target} within {timeout:g} s"
        ) from None
    except MarkPermissionError:
        raise
    except OSError as exc:
        raise UpstreamUnreachableError(
            f"{who} dropped the connection during CONNECT {target}: "
            f"{_reason(exc)}"
        ) from None
    finally:
        if sock is not None:
            sock.close()


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket, who: str,
                     target: str) -> ConnectResponse:
    parser = ConnectResponseParser()
    while True:
        data = await loop.sock_recv(sock, _RECV_SIZE)
        try:
            if not data:
                parser.eof()
            response = parser.feed(data)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"{who} broke CONNECT {target}: {exc}") from None
        if response is not None:
            return response


async def connect_marked(host: str, port: int, *, mark: int | None, who: str = "") -> socket.socket:
    """A connected non-blocking TCP socket to ``host:port`` carrying ``SO_MARK``.

    ``mark`` 0 or None leaves the mark unset. Names are resolved with the
    loop's getaddrinfo and each address is tried in turn. Raises
    :class:`UpstreamUnreachableError` (one line naming ``who``) when none
    connects, :class:`MarkPermissionError` (an UpstreamError and a
    PermissionError) when the mark cannot be set (needs CAP_NET_ADMIN). The caller bounds the time.
    """
    who = who or format_authority(host, port)
    loop = asyncio.get_running_loop()
    try:
        ip = ipaddress.ip_address(host)
        addrs = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    except ValueError:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UpstreamUnreachableError(f"cannot resolve {who}: {exc.strerror}") from None
        addrs = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    last: OSError | None = None
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _set_mark(sock, mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
            return sock
        except MarkPermissionError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    reason = _reason(last) if last is not None else "no address"
    raise UpstreamUnreachableError(f"cannot reach {who}: {reason}")


def _set_mark(sock: socket.socket, mark: int | None) -> None:
    if not mark:
        return  # 0/None: leave the socket unmarked (tests, unprivileged use)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except PermissionError:
        raise MarkPermissionError(
            "setting SO_MARK on upstream sockets needs CAP_NET_ADMIN: run as root"
        ) from None


def _reason(exc: OSError) -> str:
    # asyncio's sock_connect replaces strerror with "Connect call failed (...)".
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
