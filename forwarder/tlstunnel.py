"""TLS to the origin over a pool tunnel, for the byte tunnels of a terminated flow.

Async adapter. A request that turns a terminated HTTPS flow into a byte tunnel (a
WebSocket ``Upgrade``) cannot ride the pool's request path, and the plaintext must not
reach the origin's TLS port as is: :func:`open_tls_tunnel` opens a tunnel with
``pool.open_tunnel`` and runs TLS to the origin inside it (``ssl.SSLObject`` over memory
BIOs), verified against the system store plus the configured origin CA, ALPN
http/1.1 only (an Upgrade is HTTP/1.1). The result is a ``ByteStream`` the stream relay
uses like any other; a verification failure is ``OriginTLSError`` (a 502 naming it).
"""

from __future__ import annotations

import asyncio
import ssl

from atlantic.pool.api import ByteStream, Pool
from atlantic.pool.errors import OriginTLSError

__all__ = ["TlsTunnel", "open_tls_tunnel", "tunnel_tls_context"]

CHUNK = 65536
HANDSHAKE_TIMEOUT_S = 10.0


def tunnel_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Client TLS to origins: system CAs plus ``ca_file``, chain and name checked, ALPN http/1.1."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TlsTunnel:
    """A ``ByteStream``: TLS (client side) over another ``ByteStream``."""

    def __init__(self, inner: ByteStream, context: ssl.SSLContext, server_name: str) -> None:
        self.inner = inner
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_hostname=server_name)
        self._send_lock = asyncio.Lock()
        self._shut = False

    async def handshake(self, origin: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Complete the handshake; OriginTLSError (one line) if it fails or takes too long."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        self.tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        data = await self.inner.read(CHUNK)
                        if not data:
                            raise OriginTLSError(origin, "the origin closed the connection during the TLS handshake")
                        self._in.write(data)
                await self._flush()
        except ssl.SSLCertVerificationError as exc:
            raise OriginTLSError(origin, f"certificate verify failed: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise OriginTLSError(origin, f"TLS handshake failed ({exc.reason or type(exc).__name__})") from None
        except TimeoutError:
            raise OriginTLSError(origin, f"no TLS handshake within {timeout:g} s") from None

    async def _flush(self) -> None:
        if not self._out.pending:
            return
        async with self._send_lock:
            while self._out.pending:
                await self.inner.write(self._out.read())

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Decrypted bytes; b"" at the origin's close_notify or the tunnel's end."""
        while True:
            try:
                return self.tls.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            await self._flush()
            data = await self.inner.read(CHUNK)
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    async def write(self, data: bytes) -> None:
        """Encrypt and send ``data``."""
        self.tls.write(data)
        await self._flush()

    async def write_eof(self) -> None:
        """close_notify, then the tunnel's own half-close."""
        await self._close_notify()
        await self.inner.write_eof()

    async def _close_notify(self) -> None:
        if self._shut:
            return
        self._shut = True
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass
        await self._flush()

    async def aclose(self, *, reset: bool = False) -> None:
        """Close (close_notify first unless ``reset``)."""
        if not reset:
            try:
                await self._close_notify()
            except Exception:  # noqa: BLE001 - a broken tunnel closes all the same
                pass
        await self.inner.aclose(reset=reset)


async def open_tls_tunnel(pool: Pool, host: str, port: int, context: ssl.SSLContext) -> TlsTunnel:
    """A verified TLS byte stream to ``host:port`` through ``pool`` (the pool's errors, or OriginTLSError)."""
    inner = await pool.open_tunnel(host, port)
    tunnel = TlsTunnel(inner, context, host)
    try:
        await tunnel.handshake(f"{host}:{port}")
    except BaseException:
        await inner.aclose(reset=True)
        raise
    return tunnel
