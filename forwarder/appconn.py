"""The application's connection as the HTTP relays see it: a plain socket, or TLS we terminate.

Async adapters with one interface (:class:`AppConn`): ``recv`` (b"" at EOF), ``sendall``,
``write_eof``, ``abort`` (RST) and ``aclose(mode)``; ``socket`` is the raw socket of a
plain connection (what the request relay may ``os.splice`` a body into) and None for
TLS, whose bytes must go through the TLS layer.

- :class:`SocketConn`: today's plain connection, a thin shell over ``loop.sock_*``.
- :class:`TlsConn`: the server side of TLS over ``ssl.MemoryBIO`` / ``SSLObject``, fed
  first with the ClientHello bytes sniffing already took from the socket. ``handshake``
  has a deadline; a failure is a :class:`TlsHandshakeError` that says whether it looks
  like the application refusing our certificate (an alert such as unknown_ca, or a close
  right after our first flight). Every write goes out under one lock, so records from
  two directions of a relay never interleave on the wire. Closing sends close_notify.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

from atlantic.pool.splice import abort_socket, set_reset_on_close

__all__ = ["AppConn", "HANDSHAKE_TIMEOUT_S", "SocketConn", "TlsConn", "TlsHandshakeError", "lingering_close"]

RECV_SIZE = 65536
LINGER_S = 2.0  # after our FIN, read what the application still sends so it sees no RST
LINGER_BYTES = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_NOTIFY_TIMEOUT_S = 1.0
# Alerts a client sends when it does not trust the certificate it was shown (OpenSSL's
# reason names): the signs of a pinned or otherwise unwilling application.
REFUSAL_REASONS = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR",
})


class AppConn(Protocol):
    """The application's side of one flow, plain or TLS (see the module docstring)."""

    socket: socket.socket | None  # the raw socket when bytes may be spliced into it, else None

    async def recv(self, max_bytes: int) -> bytes:
        """The application's next bytes; b"" at EOF (or a reset)."""
        ...

    async def sendall(self, data: bytes) -> None:
        """Send all of ``data``; OSError if the application went away."""
        ...

    async def write_eof(self) -> None:
        """No more data from us (FIN; close_notify first over TLS)."""
        ...

    def abort(self) -> None:
        """Close at once with an RST."""
        ...

    async def aclose(self, mode: str = "close") -> None:
        """Close: ``graceful`` (FIN, then drain what still comes, bounded), ``close`` or ``reset``."""
        ...


class SocketConn:
    """A plain, non-blocking TCP socket (the fast path: the relays splice into ``socket``)."""

    __slots__ = ("socket", "loop")

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.loop = asyncio.get_running_loop()

    async def recv(self, max_bytes: int) -> bytes:
        """The next bytes from the socket; b"" at EOF or reset."""
        try:
            return await self.loop.sock_recv(self.socket, max_bytes)
        except ConnectionError:
            return b""

    async def sendall(self, data: bytes) -> None:
        """Send all of ``data`` (OSError if the application went away)."""
        await self.loop.sock_sendall(self.socket, data)

    async def write_eof(self) -> None:
        """FIN."""
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        """RST and close."""
        abort_socket(self.socket)

    async def aclose(self, mode: str = "close") -> None:
        """Close lingering (``graceful``), plainly (``close``) or with an RST (``reset``)."""
        sock = self.socket
        if mode == "reset":
            set_reset_on_close(sock)
        try:
            if mode == "graceful":
                await lingering_close(self.loop, sock)
        finally:
            sock.close()


class TlsHandshakeError(Exception):
    """The application's TLS handshake with us failed; one line, and what it looks like.

    ``kind`` is what is counted (``refused our certificate``, ``closed during the
    handshake``, ``timeout``, ``failed``); ``refused`` is True when the application most
    likely does not accept our certificate (pinning): its domain should pass through.
    """

    def __init__(self, message: str, kind: str, refused: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.refused = refused


class TlsConn:
    """The server side of the application's TLS, over memory BIOs on its socket."""

    socket = None  # bytes must go through TLS: never spliced

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, first_bytes: bytes = b"") -> None:
        """``first_bytes``: what sniffing already read (the ClientHello), fed to TLS first."""
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_side=True)
        if first_bytes:
            self._in.write(first_bytes)
        self._send_lock = asyncio.Lock()
        self.sent_flight = False  # a server flight went out (ServerHello, our certificate)
        self.shut = False  # close_notify sent
        self.closed = False

    @property
    def alpn(self) -> str | None:
        """The protocol the application and we agreed on (ALPN), or None."""
        return self.tls.selected_alpn_protocol()

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Complete the handshake within ``timeout`` seconds, else :class:`TlsHandshakeError`."""
        try:
            async with asyncio.timeout(timeout):
                await self._handshake()
        except TimeoutError:
            raise TlsHandshakeError(f"the application did not complete its TLS handshake within {timeout:g} s",
                                    "timeout") from None
        except OSError as exc:  # the socket itself (a reset before our flight, a send that failed)
            raise self._closed(f"{type(exc).__name__}: {exc.strerror or exc}") from None

    async def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                try:
                    await self._flush()  # the alert we owe the application
                except OSError:
                    pass
                raise self._failed(exc) from None
            await self._flush()
            try:
                data = await self.loop.sock_recv(self.sock, RECV_SIZE)
            except ConnectionError as exc:
                raise self._closed(f"{type(exc).__name__}") from None
            if not data:
                raise self._closed("EOF")
            self._in.write(data)
        await self._flush()  # our Finished, session tickets

    async def _flush(self) -> None:
        """Send what TLS has written so far, in order (one sender at a time)."""
        if not self._out.pending:
            return
        async with self._send_lock:
            while self._out.pending:
                data = self._out.read()
                self.sent_flight = True
                await self.loop.sock_sendall(self.sock, data)

    def _failed(self, exc: ssl.SSLError) -> TlsHandshakeError:
        reason = exc.reason or type(exc).__name__
        if reason in REFUSAL_REASONS:
            return TlsHandshakeError(f"the application refused Atlantic's certificate (TLS alert {reason})",
                                     "refused our certificate", refused=True)
        return TlsHandshakeError(f"TLS handshake with the application failed ({reason})", "failed")

    def _closed(self, how: str) -> TlsHandshakeError:
        if self.sent_flight:  # it saw our certificate and left: the quiet way to refuse it
            return TlsHandshakeError(f"the application closed its connection after seeing Atlantic's certificate "
                                     f"({how})", "closed after our certificate", refused=True)
        return TlsHandshakeError(f"the application closed its connection during the TLS handshake ({how})",
                                 "closed during the handshake")

    async def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of decrypted data; b"" at close_notify, EOF, reset or a TLS error."""
        tls = self.tls
        while True:
            try:
                return tls.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                return b""
            if self._out.pending:  # e.g. an answer to a key update
                try:
                    await self._flush()
                except OSError:
                    return b""
            try:
                data = await self.loop.sock_recv(self.sock, RECV_SIZE)
            except ConnectionError:
                return b""
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    async def sendall(self, data: bytes) -> None:
        """Encrypt and send all of ``data`` (OSError, ssl.SSLError included, if that fails)."""
        if data:
            self.tls.write(data)
        await self._flush()

    async def write_eof(self) -> None:
        """close_notify, then FIN; the application may still send (TLS 1.3 half-close)."""
        await self._close_notify()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def _close_notify(self) -> None:
        if self.shut:
            return
        self.shut = True
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass  # the application's own close_notify is not waited for
        try:
            async with asyncio.timeout(CLOSE_NOTIFY_TIMEOUT_S):
                await self._flush()
        except (OSError, ValueError, TimeoutError):  # ValueError: a socket closed under us
            pass

    def abort(self) -> None:
        """RST and close (no close_notify: the application must not read a clean end)."""
        self.closed = True
        abort_socket(self.sock)

    async def aclose(self, mode: str = "close") -> None:
        """close_notify then close (lingering for ``graceful``); ``reset``: RST only. Once closed, a no-op."""
        sock = self.sock
        if self.closed:
            return
        self.closed = True
        if mode == "reset":
            abort_socket(sock)
            return
        try:
            await self._close_notify()
            if mode == "graceful":
                await lingering_close(self.loop, sock)
        finally:
            sock.close()


async def lingering_close(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """FIN first, then read and drop what the application still sends (bounded), so that
    closing with unread bytes does not RST away a response it has not read yet."""
    try:
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_S):
            drained = 0
            while drained < LINGER_BYTES:
                data = await loop.sock_recv(sock, RECV_SIZE)
                if not data:
                    return
                drained += len(data)
    except (OSError, TimeoutError):
        pass
