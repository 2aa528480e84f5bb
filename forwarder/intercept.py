"""Which TLS flows Atlantic terminates: the user's intercept list and the pass-through memory.

Pure core (time comes in as ``now``, monotonic seconds).

Patterns: ``"example.com"`` and ``"*.example.com"`` mean the same thing, the domain and
every name under it (``example.com``, ``www.example.com``, ``a.b.example.com``): exactly
the dNSName subtree the local CA's name constraints permit (see ``localca``), so a name
the list matches is always one the CA may sign. A wildcard may only be the whole first
label; a bare ``"*"``, a top-level domain alone and IP literals are refused. Flows with
no SNI, or an SNI that is an IP literal, never match: they are tunnelled as before.

Pass-through memory: an application that refuses our certificate (a TLS alert such as
unknown_ca, or a close right after our first flight: certificate pinning, or a client
that does not trust the local CA) would fail on every connection. Its name (the exact
SNI, not the whole pattern) is marked pass-through for ``pass_through_s`` (1 h): its
flows are tunnelled untouched until then. The memory is bounded (``max_pass_through``
names; the entry ending soonest gives way), and ``status`` lists each name with its
reason and the seconds left.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["InterceptPolicy", "MAX_PATTERNS", "PassThrough", "normalize_pattern"]

MAX_PATTERNS = 256
PASS_THROUGH_S = 3600.0
MAX_PASS_THROUGH = 1024
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_pattern(pattern: str) -> str:
    """The domain a pattern covers: ``"*.Example.COM."`` -> ``"example.com"``.

    ValueError (one line, naming the pattern) for a bare ``*``, a wildcard elsewhere
    than the first label, an IP literal, a top-level domain alone, or no DNS name."""
    if not isinstance(pattern, str):
        raise ValueError(f"expected a domain such as *.example.com, got {pattern!r}")
    shown = repr(pattern[:80])
    host = pattern.strip().lower()
    if host in ("*", "*.", ""):
        raise ValueError(f"{shown} would intercept every domain: list domains such as *.example.com")
    if host.startswith("*."):
        host = host[2:]
    if "*" in host:
        raise ValueError(f"{shown}: a wildcard may only be the whole first label, as in *.example.com")
    host = check_hostname(host.rstrip("."), shown)
    if "." not in host:
        raise ValueError(f"{shown} is a whole top-level domain: list a domain under it, such as example.{host}")
    return host


def check_hostname(host: str, shown: str) -> str:
    """``host`` (lowercase, no trailing dot) if it is a DNS name, else ValueError naming
    ``shown``: an address, non-ASCII (IDNA must be written xn--), a bad label or length."""
    if is_ip_literal(host):
        raise ValueError(f"{shown} is an IP address: only DNS names can be intercepted")
    if not host.isascii():
        raise ValueError(f"{shown} is not ASCII: write it in its xn-- (IDNA) form")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{shown} is not a valid DNS name")
    if labels[-1].isdigit():
        raise ValueError(f"{shown} looks like an IP address: only DNS names can be intercepted")
    return host


def is_ip_literal(name: str) -> bool:
    """True for an IPv4 or IPv6 address (brackets allowed)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class PassThrough:
    """A name whose flows are tunnelled untouched until ``until`` (monotonic), and why."""

    name: str
    reason: str
    until: float


class InterceptPolicy:
    """The intercept list (matching) and the pass-through memory (see the module docstring)."""

    def __init__(self, patterns: Iterable[str] = (), *, pass_through_s: float = PASS_THROUGH_S,
                 max_pass_through: int = MAX_PASS_THROUGH) -> None:
        """ValueError (one line) if a pattern is unusable or there are more than ``MAX_PATTERNS``."""
        patterns = list(patterns)
        if len(patterns) > MAX_PATTERNS:
            raise ValueError(f"{len(patterns)} domains to intercept: at most {MAX_PATTERNS}")
        self.patterns = tuple(patterns)
        self.domains = frozenset(normalize_pattern(p) for p in patterns)
        self.pass_through_s = pass_through_s
        self.max_pass_through = max_pass_through
        self._passed: dict[str, PassThrough] = {}
        self.marked = 0  # names marked pass-through so far (counter)

    def __bool__(self) -> bool:
        return bool(self.domains)

    def matches(self, name: str | None) -> bool:
        """Whether ``name`` (an SNI, lowercase) lies under a listed domain; never for None or an address."""
        if not name or not self.domains:
            return False
        name = name.lower().rstrip(".")
        if is_ip_literal(name):
            return False
        domains = self.domains
        if name in domains:
            return True
        dot = name.find(".")
        while dot >= 0:
            name = name[dot + 1 :]
            if name in domains:
                return True
            dot = name.find(".")
        return False

    def should_terminate(self, name: str | None, now: float) -> bool:
        """Listed and not (any more) marked pass-through at ``now``."""
        if not self.matches(name):
            return False
        entry = self._passed.get(name.lower().rstrip("."))
        if entry is None:
            return True
        if now < entry.until:
            return False
        del self._passed[entry.name]
        return True

    def mark_pass_through(self, name: str, reason: str, now: float) -> None:
        """Tunnel ``name`` untouched for ``pass_through_s`` from ``now`` (the application refused
        our certificate); bounded: expired entries go first, then the one ending soonest."""
        name = name.lower().rstrip(".")
        passed = self._passed
        if name not in passed and len(passed) >= self.max_pass_through:
            self._expire(now)
            if len(passed) >= self.max_pass_through:
                del passed[min(passed.values(), key=lambda e: e.until).name]
        passed[name] = PassThrough(name, reason, now + self.pass_through_s)
        self.marked += 1

    def _expire(self, now: float) -> None:
        for name in [n for n, e in self._passed.items() if e.until <= now]:
            del self._passed[name]

    def pass_through(self, now: float) -> list[dict]:
        """The names passed through at ``now``, each with its reason and seconds left (for status)."""
        entries = sorted((e for e in list(self._passed.values()) if e.until > now), key=lambda e: e.until)
        return [{"name": e.name, "reason": e.reason, "seconds_left": round(e.until - now)} for e in entries]
