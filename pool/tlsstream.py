"""TLS inside a tunnel: an ``ssl.SSLObject`` over memory BIOs, driven by hand.

Async adapter. asyncio's TLS (``create_connection``, ``start_tls``) takes no ``session``
to resume and wraps only an asyncio transport; this one wraps any :class:`Carrier` the
pool makes (a plain or TLS socket after CONNECT, an HTTP/2 CONNECT stream), resumes
sessions, and offers what :class:`~atlantic.pool.http11.H1Connection` and
:class:`~atlantic.pool.h2conn.H2Connection` use of a Transport (``read``, ``write``,
``drain``, ``is_peer_closed``, ``aclose``, ...). It reads from the carrier only when
asked, so backpressure is the carrier's own. asyncio's TLS is Python over memory BIOs too,
so this costs about what it does.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Protocol

from atlantic.pool.errors import UpstreamError

__all__ = ["Carrier", "TLSStream"]

CARRIER_READ = 262144
_SESSION_CHECKS = 8  # reads that look for a resumable session (a TLS 1.3 ticket) before giving up


class Carrier(Protocol):
    """The byte stream TLS rides: :class:`~atlantic.pool.transport.SocketStream` or
    :class:`~atlantic.pool.h2stream.H2Stream`."""

    async def read(self, max_bytes: int = CARRIER_READ) -> bytes:
        """Up to ``max_bytes``; ``b""`` at end of stream."""

    def write_nowait(self, data: bytes) -> None:
        """Queue ``data`` for sending now (see :meth:`drain`)."""

    async def drain(self) -> None:
        """Wait while too much is queued; raises once the stream failed."""

    def take_buffered(self) -> bytes:
        """Bytes received and not read yet, removed (for a check of an idle connection)."""

    def is_peer_closed(self) -> bool:
        """True once the peer ended or broke the stream."""

    def is_closing(self) -> bool:
        """True once closing or closed (by either side)."""

    def abort(self) -> None:
        """Close at once (RST / RST_STREAM)."""

    async def aclose(self) -> None:
        """Close cleanly (bounded)."""


class TLSStream:
    """A TLS client connection over ``carrier``, verified as ``ctx`` says for ``server_hostname``.

    ``session``: a session of an earlier connection to resume (same ``ctx``);
    ``on_session(session)`` is called once with a resumable session of this connection.
    Call :meth:`handshake` first; it raises ``ssl.SSLError`` (``SSLCertVerificationError``
    for a certificate), ``ConnectionResetError`` at EOF, or what the carrier raises.
    """

    __slots__ = ("alpn", "opened_at", "resumed", "name", "_c", "_ssl", "_in", "_out", "_plain",
                 "_eof", "_error", "_closed", "_on_session", "_checks")

    def __init__(self, carrier: Carrier, ctx: ssl.SSLContext, server_hostname: str, *, opened_at: float,
                 name: str, session: ssl.SSLSession | None = None,
                 on_session: Callable[[ssl.SSLSession], None] | None = None) -> None:
        self._c = carrier
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname, session=session)
        self.alpn: str | None = None
        self.opened_at = opened_at
        self.resumed = False
        self.name = name
        self._plain = b""  # application bytes met while checking an idle connection
        self._eof = False
        self._error: Exception | None = None
        self._closed = False
        self._on_session = on_session
        self._checks = _SESSION_CHECKS

    async def handshake(self) -> None:
        """The TLS handshake (ALPN, resumption): ``alpn`` and ``resumed`` are set after it."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = await self._c.read(CARRIER_READ)
                if not data:
                    raise ConnectionResetError("connection closed during the TLS handshake") from None
                self._in.write(data)
        self._flush()
        self.alpn = self._ssl.selected_alpn_protocol()
        self.resumed = self._ssl.session_reused
        self._look_for_session()

    # ---- the Transport surface ----
    is_tls = True
    socket = None  # the bytes on any socket below are encrypted

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` decrypted; ``b""`` at EOF (close_notify or not); raises
        ``ConnectionResetError`` when TLS or the carrier broke (as a socket would)."""
        if self._plain:
            data, self._plain = self._plain[:max_bytes], self._plain[max_bytes:]
            return data
        while True:
            if self._error is not None:
                raise self._error
            try:
                data = self._ssl.read(max_bytes)
            except ssl.SSLWantReadError:
                self._flush()  # e.g. the answer to a key update
                if self._eof:
                    return b""
                try:
                    got = await self._c.read(CARRIER_READ)
                except UpstreamError as e:  # an HTTP/2 carrier's failure: a lost connection here
                    self._error = ConnectionResetError(f"{self.name}: {e}")
                    raise self._error from None
                if not got:
                    self._eof = True  # no close_notify: still the end (h11 checks the framing)
                    return b""
                self._in.write(got)
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLError as e:
                self._error = ConnectionResetError(f"{self.name}: TLS failed ({e.reason or e})")
                raise self._error from None
            if not data:
                self._eof = True
                return b""
            if self._checks:
                self._look_for_session()
            return data

    def write(self, data: bytes) -> None:
        """Encrypt and queue ``data`` (dropped once closing; a TLS failure shows at :meth:`drain`)."""
        if not data or self._closed or self._error is not None:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as e:
            self._error = ConnectionResetError(f"{self.name}: TLS failed ({e.reason or e})")
            return
        self._flush()

    async def drain(self) -> None:
        """Wait while the carrier's send buffer is full; raises once TLS or the carrier failed."""
        if self._error is not None:
            raise self._error
        try:
            await self._c.drain()
        except UpstreamError as e:
            self._error = ConnectionResetError(f"{self.name}: {e}")
            raise self._error from None

    def is_closing(self) -> bool:
        """True once closing or closed, by us or the peer, or TLS failed."""
        return self._closed or self._error is not None or self._c.is_closing()

    def is_peer_closed(self) -> bool:
        """True if the origin closed (close_notify or EOF) or sent application bytes while
        the connection was idle: decrypts what the carrier holds, without waiting."""
        if self._closed or self._eof or self._error is not None or self._plain:
            return True
        if data := self._c.take_buffered():
            self._in.write(data)
            try:
                got = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                got = None  # TLS records only (a session ticket, a key update)
            except ssl.SSLZeroReturnError:
                got = b""
            except ssl.SSLError as e:
                self._error = ConnectionResetError(f"{self.name}: TLS failed ({e.reason or e})")
                return True
            self._flush()
            if got is not None:
                self._eof = not got
                self._plain = got
                return True
            if self._checks:
                self._look_for_session()
        return self._c.is_peer_closed()

    def is_plain_tcp(self) -> bool:
        """False: these bytes must pass through Python (no splicing)."""
        return False

    def can_write_eof(self) -> bool:
        """False: TLS has no half-close."""
        return False

    def abort(self) -> None:
        """Close at once (the carrier is aborted)."""
        self._closed = True
        self._c.abort()

    async def aclose(self, timeout: float = 1.0) -> None:
        """close_notify, then close the carrier (bounded by the carrier's own close)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ssl.unwrap()
        except (ssl.SSLError, ValueError):
            pass  # close_notify is queued; the peer's answer is not awaited
        self._flush()
        await self._c.aclose()

    # ---- internal ----
    def _flush(self) -> None:
        if self._out.pending:
            self._c.write_nowait(self._out.read())

    def _look_for_session(self) -> None:
        """Hand a resumable session to ``on_session`` once (TLS 1.3: after its ticket came)."""
        if self._on_session is None:
            self._checks = 0
            return
        self._checks -= 1
        session = self._ssl.session
        if session is not None and (session.has_ticket or self._ssl.version() != "TLSv1.3"):
            callback, self._on_session, self._checks = self._on_session, None, 0
            callback(session)
