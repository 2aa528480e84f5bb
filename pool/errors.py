"""Errors of the upstream path, each saying who is at fault in one line.

Every message names the proxy (redacted, never with its password) and the
target, and says what to do next where there is something to do.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every error met while opening a tunnel through an upstream."""


class UpstreamUnreachableError(UpstreamError):
    """The proxy (or, in direct mode, the target) could not be reached at all."""


class UpstreamTimeoutError(UpstreamUnreachableError):
    """The proxy accepted TCP but did not answer CONNECT in time."""


class MarkPermissionError(UpstreamError, PermissionError):
    """SO_MARK could not be set: the daemon lacks CAP_NET_ADMIN (a local fault)."""


class UpstreamStatusError(UpstreamError):
    """The proxy answered CONNECT with a non-2xx status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UpstreamAuthError(UpstreamStatusError):
    """407: the proxy rejected (or wanted) credentials."""


class UpstreamRefusedError(UpstreamStatusError):
    """403: the proxy refuses to open this tunnel (policy, port, ACL)."""


class UpstreamTargetError(UpstreamStatusError):
    """502/503/504: the proxy could not reach the target."""


class RemoteProtocolError(UpstreamError):
    """The proxy broke HTTP/1.1: malformed, oversized or truncated response head."""


class LocalProtocolError(UpstreamError):
    """The request cannot be sent as HTTP: the caller's fault (the application's), not the
    upstream's. Raised before anything reaches a connection: a host that is not an ASCII
    name or IP literal, a header value that is not Latin-1 text or holds a control
    character, a target with bytes HTTP does not allow. One line, naming what is wrong.
    """


class OriginTLSError(UpstreamError):
    """TLS to the origin failed (certificate chain or name did not verify, or the handshake
    broke): the origin's fault, or whoever answered in its name. Never retried unverified.

    ``origin`` is ``host:port``; ``reason`` the short cause (e.g. ``certificate verify
    failed: self-signed certificate``), for a 502 that names it.
    """

    def __init__(self, origin: str, reason: str) -> None:
        super().__init__(f"origin {origin}: {reason}")
        self.origin = origin
        self.reason = reason
