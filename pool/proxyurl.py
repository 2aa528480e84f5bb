"""The proxy URL cache: endpoint, credentials and session rendered once into a snapshot.

Pure: the time and the session-id source come in as arguments. Providers encode session
parameters in the user name (``customer-{user}-cc-{country}-sessid-{session}-sesstime-
{minutes}``); :func:`render_snapshot` renders that template, the ``Proxy-Authorization``
value and the pool key once into a frozen :class:`ProxySnapshot`. :class:`ProxyURLCache`
holds the current one in a single attribute: the hot path reads ``cache.current`` (no
lock, no string building); a background task calls :meth:`ProxyURLCache.refresh` every
30 s, which replaces the snapshot when the sticky session must rotate.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from atlantic.pool.connect import basic_authorization
from atlantic.pool.upstream import Upstream, UpstreamURLError, parse_upstream
from atlantic.pool.plan import PoolKey

__all__ = ["ProxyConfig", "ProxySnapshot", "ProxyURLCache", "REFRESH_INTERVAL_S",
           "TemplateError", "proxy_key", "render_snapshot"]

REFRESH_INTERVAL_S = 30.0
_FIELDS = frozenset({"user", "country", "session", "minutes"})


class TemplateError(UpstreamURLError):
    """A username template that cannot be rendered; one line, names the bad field."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """What the user configured: the URL, an optional username template and its parameters.

    ``params`` fills template fields other than ``user`` (the URL's user name),
    ``session`` (generated) and ``minutes`` (``session_minutes``). With a template
    and ``session_minutes`` the session is sticky for that long, then rotated.
    """

    url: str
    username_template: str | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    session_minutes: int | None = None


@dataclass(frozen=True, slots=True)
class ProxySnapshot:
    """One rendering: the upstream to use, its ready-made header and its pool key."""

    upstream: Upstream
    proxy_authorization: str | None
    key: PoolKey
    session: str | None = None
    rendered_at: float = 0.0
    session_since: float = 0.0
    rotate_at: float | None = None  # when the sticky session expires (None: never)

    def is_due(self, now: float) -> bool:
        """True when the sticky session has run out and a new one must be drawn."""
        return self.rotate_at is not None and now >= self.rotate_at


def proxy_key(upstream: Upstream, proxy_authorization: str | None, origin: str = "") -> PoolKey:
    """The pool key: proxy endpoint + rendered credentials (+ origin for ``direct``)."""
    if upstream.is_direct:
        return PoolKey("direct", "", origin)
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return PoolKey(f"{upstream.kind.value}://{host}:{upstream.port}", proxy_authorization or "")


def _check_template(template: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise TemplateError(f"username template {template!r} is malformed: {e}") from None
    if unknown := names - _FIELDS:
        raise TemplateError(
            f"username template {template!r} uses unknown field(s) "
            f"{', '.join(sorted(unknown))}: use {{user}}, {{country}}, {{session}}, {{minutes}}")


def render_snapshot(config: ProxyConfig, now: float, session: str | None = None,
                    session_since: float | None = None) -> ProxySnapshot:
    """Render ``config`` at ``now``; ``session`` is the sticky session id to use (or None).

    ``session_since``: when that session was drawn (default ``now``); it expires
    ``session_minutes`` later.

    Raises :class:`UpstreamURLError` / :class:`TemplateError` with a one-line message.
    """
    upstream = parse_upstream(config.url)
    rotate_at = None
    since = now if session_since is None else session_since
    if config.username_template is not None and not upstream.is_direct:
        _check_template(config.username_template)
        values = {"user": upstream.username or "", "session": session or "",
                  "minutes": "" if config.session_minutes is None else str(config.session_minutes)}
        values.update({k: v for k, v in config.params.items() if k not in ("user", "session")})
        if missing := sorted(f for f in _fields(config.username_template) if f not in values):
            raise TemplateError(f"username template needs a value for {', '.join(missing)}")
        upstream = replace(upstream, username=config.username_template.format_map(values))
        if session is not None and config.session_minutes:
            rotate_at = since + 60.0 * config.session_minutes
    auth = (basic_authorization(upstream.username, upstream.password)
            if upstream.has_credentials else None)
    return ProxySnapshot(upstream, auth, proxy_key(upstream, auth), session, now, since, rotate_at)


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _uses_session(config: ProxyConfig) -> bool:
    return config.username_template is not None and "session" in _fields(config.username_template)


class ProxyURLCache:
    """The current :class:`ProxySnapshot` in one attribute, replaced whole, never mutated.

    ``new_session`` draws a fresh session id (e.g. ``lambda: secrets.token_hex(4)``);
    it is a parameter so tests are deterministic.
    """

    __slots__ = ("config", "current", "_new_session")

    def __init__(self, config: ProxyConfig, now: float, new_session: Callable[[], str]) -> None:
        self.config = config
        self._new_session = new_session
        session = new_session() if _uses_session(config) else None
        self.current: ProxySnapshot = render_snapshot(config, now, session)

    def refresh(self, now: float, *, rotate: bool = False) -> bool:
        """Re-render; draw a new session when due (or ``rotate``). True if the key changed."""
        old = self.current
        session = old.session
        if _uses_session(self.config) and (rotate or session is None or old.is_due(now)):
            session = self._new_session()
        since = old.session_since if session == old.session else now
        self.current = render_snapshot(self.config, now, session, since)
        return self.current.key != old.key

    def set_config(self, config: ProxyConfig, now: float) -> None:
        """Switch to a new configuration (e.g. failover): render it at once."""
        self.config = config
        session = self._new_session() if _uses_session(config) else None
        self.current = render_snapshot(config, now, session)

    def seconds_until_refresh(self, now: float) -> float:
        """Sleep this long before the next :meth:`refresh` (30 s, or sooner for rotation)."""
        wait = REFRESH_INTERVAL_S
        if self.current.rotate_at is not None:
            wait = min(wait, self.current.rotate_at - now)
        return max(0.0, wait)
