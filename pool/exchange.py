"""Request/response pieces shared by the pool's HTTP/1.1 and HTTP/2 paths (pure helpers
plus the small HTTP/2 response stream wrapper)."""

from __future__ import annotations

from atlantic.pool.errors import UpstreamAuthError
from atlantic.pool.api import RequestHead, ResponseHead
from atlantic.pool.h2conn import H2Stream
from atlantic.pool.http11 import HOP_BY_HOP, response_head

__all__ = ["H2ResponseStream", "auth_error", "h2_connect_headers", "h2_request_headers", "h2_response_head"]

_H2_DROP = HOP_BY_HOP | {"host", "content-length"}


def h2_request_headers(head: RequestHead, proxy_authorization: str | None) -> list[tuple[bytes, bytes]]:
    """Pseudo-headers for a proxy request (``:scheme http``), then lower-cased headers.

    As bytes: values are Latin-1 text (one character per byte the application sent), and
    h2 would encode ``str`` as UTF-8, turning each byte above 0x7f into two. The head is
    checked first (``check_request``): an unencodable value never gets here.
    """
    out = [(b":method", head.method.encode("ascii")), (b":scheme", head.endpoint.scheme.encode("ascii")),
           (b":authority", head.endpoint.authority.encode("ascii")), (b":path", head.target.encode("ascii"))]
    for name, value in head.headers:
        lname = name.lower()
        if lname not in _H2_DROP:
            out.append((lname.encode("ascii"), value.encode("latin-1")))
    if head.body_length:
        out.append((b"content-length", str(head.body_length).encode("ascii")))
    if proxy_authorization is not None:
        out.append((b"proxy-authorization", proxy_authorization.encode("latin-1")))
    return out


def h2_connect_headers(authority: str, proxy_authorization: str | None) -> list[tuple[str, str]]:
    """A CONNECT stream (RFC 9113 8.5): only ``:method`` and ``:authority`` pseudo-headers."""
    out = [(":method", "CONNECT"), (":authority", authority)]
    if proxy_authorization is not None:
        out.append(("proxy-authorization", proxy_authorization))
    return out


def auth_error(proxy: str, what: str, reason: str = "Proxy Authentication Required") -> UpstreamAuthError:
    """The one-line 407 error for a request (CONNECT has its own in pool.connect)."""
    return UpstreamAuthError(
        f"proxy {proxy} rejected the credentials (407 {reason}) for {what}: "
        "check the user name and password", 407)


class H2ResponseStream:
    """A response on an HTTP/2 stream (the ResponseStream protocol)."""

    __slots__ = ("head", "_stream")

    def __init__(self, head: ResponseHead, stream: H2Stream) -> None:
        self.head = head
        self._stream = stream

    async def read(self, max_bytes: int = 262144) -> bytes:
        """The next piece of the body; ``b""`` at END_STREAM."""
        return await self._stream.read(max_bytes)

    def read_nowait(self, max_bytes: int = 262144) -> bytes | None:
        """What ``read`` would return at once, or None: the relay then sends a small
        response's head and body to the application in one write."""
        return self._stream.read_nowait(max_bytes)

    async def aclose(self) -> None:
        """Finish the stream (RST_STREAM if the body was not read to the end)."""
        await self._stream.aclose()


def h2_response_head(status: int, headers: list[tuple[str, str]], method: str) -> ResponseHead:
    """The ResponseHead of an HTTP/2 response (length from content-length, else until END)."""
    return response_head(status, "", headers, method=method, http_version="2", chunked=False)

