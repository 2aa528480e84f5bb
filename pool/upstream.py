"""The upstream a tunnel goes through: ``direct`` or a proxy URL, parsed once.

Pure: no sockets, no I/O. ``parse_upstream("http://user:pass@host:3128")``
gives an immutable :class:`Upstream` whose ``repr`` and ``redacted()`` never
show the password, so it is safe to log and to put in error messages.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = ["Upstream", "UpstreamKind", "UpstreamURLError", "parse_upstream", "DIRECT"]


class UpstreamURLError(ValueError):
    """An upstream URL that cannot be used; the message is one line, password redacted."""


class UpstreamKind(enum.StrEnum):
    """How a tunnel reaches its target."""

    DIRECT = "direct"
    HTTP = "http"
    HTTPS = "https"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A parsed upstream. ``host``/``port`` are the proxy's (empty/0 for direct)."""

    kind: UpstreamKind
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_direct(self) -> bool:
        """True when tunnels connect to the target itself, with no proxy."""
        return self.kind is UpstreamKind.DIRECT

    @property
    def has_credentials(self) -> bool:
        """True when a Proxy-Authorization header must be sent."""
        return self.username is not None

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (safe to log)."""
        if self.is_direct:
            return "direct"
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        return f"{self.kind.value}://{userinfo}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Upstream({self.redacted()!r})"

    __str__ = redacted


DIRECT = Upstream(UpstreamKind.DIRECT)

_URL = re.compile(
    r"""^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://
        (?:(?P<userinfo>[^@/?#]*)@)?
        (?P<hostport>[^/?#]*)
        (?P<rest>.*)$""",
    re.X | re.S,
)
# RFC 1123 labels, plus "_" which some providers use in internal names.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


def parse_upstream(url: str) -> Upstream:
    """Parse ``direct``, ``http://[user[:pass]@]host:port`` or ``https://...``.

    Proxies need an explicit port (providers use many: 3128, 8080, 10000+;
    guessing one would fail later with a less clear error). User and password
    are percent-decoded. Raises :class:`UpstreamURLError` with a one-line message.
    """
    if not isinstance(url, str):
        raise UpstreamURLError(f"upstream must be a string, got {type(url).__name__}")
    text = url.strip()
    if not text:
        raise UpstreamURLError("upstream is empty: use 'direct' or http://user:pass@host:port")
    if text.lower() in ("direct", "direct://"):
        return DIRECT
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise UpstreamURLError("upstream URL contains whitespace or control characters")

    m = _URL.match(text)
    if m is None:
        shown = text if "@" not in text else "<redacted>"
        raise UpstreamURLError(
            f"upstream {shown!r} is not a URL: use 'direct' or http://user:pass@host:port"
        )
    scheme = m["scheme"].lower()
    userinfo, hostport, rest = m["userinfo"], m["hostport"], m["rest"]
    safe = _redact_text(scheme, userinfo, hostport)

    if scheme not in ("http", "https"):
        raise UpstreamURLError(
            f"upstream {safe}: unknown scheme {scheme!r} (supported: direct, http, https)"
        )
    if rest not in ("", "/"):
        raise UpstreamURLError(f"upstream {safe}: a proxy URL takes no path, query or fragment")

    username = password = None
    if userinfo is not None:
        user_raw, sep, pass_raw = userinfo.partition(":")
        if not user_raw:
            if sep:
                raise UpstreamURLError(f"upstream {safe}: password given without a user name")
            raise UpstreamURLError(f"upstream {safe}: empty user name before '@'")
        username = _decode(user_raw, safe, "user name")
        password = _decode(pass_raw, safe, "password") if sep else None

    host, port = _split_hostport(hostport, safe)
    return Upstream(UpstreamKind(scheme), host, port, username, password)


def _split_hostport(hostport: str, safe: str) -> tuple[str, int]:
    if not hostport:
        raise UpstreamURLError(f"upstream {safe}: missing proxy host")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise UpstreamURLError(f"upstream {safe}: unclosed '[' in IPv6 address")
        host, after = hostport[1:end], hostport[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UpstreamURLError(f"upstream {safe}: {host!r} is not an IPv6 address") from None
        if not after.startswith(":"):
            raise UpstreamURLError(f"upstream {safe}: missing port (proxies need an explicit port)")
        port_text = after[1:]
    else:
        host, sep, port_text = hostport.rpartition(":")
        if not sep:
            host, port_text = hostport, ""
        if ":" in host:
            raise UpstreamURLError(f"upstream {safe}: IPv6 addresses go in brackets, e.g. [::1]:3128")
        if not host:
            raise UpstreamURLError(f"upstream {safe}: missing proxy host")
        if not _HOSTNAME.match(host):
            raise UpstreamURLError(f"upstream {safe}: {host!r} is not a valid host name")
        host = host.lower().rstrip(".")
        if not sep:
            raise UpstreamURLError(
                f"upstream {safe}: missing port (proxies need an explicit port, e.g. {host}:3128)"
            )
    if not port_text.isascii() or not port_text.isdigit():
        raise UpstreamURLError(f"upstream {safe}: bad port {port_text!r} (expected 1-65535)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise UpstreamURLError(f"upstream {safe}: bad port {port} (expected 1-65535)")
    return host, port


def _decode(part: str, safe: str, what: str) -> str:
    try:
        return unquote(part, errors="strict")
    except UnicodeDecodeError:
        raise UpstreamURLError(f"upstream {safe}: {what} is not valid percent-encoded UTF-8") from None


def _redact_text(scheme: str, userinfo: str | None, hostport: str) -> str:
    """The URL as typed but with any password replaced, for error messages."""
    if userinfo is None:
        return f"{scheme}://{hostport}"
    user, sep, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if sep else ''}@{hostport}"
