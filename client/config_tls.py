"""The [tls] section: which domains' HTTPS Atlantic terminates, where its CA lives, which
extra CA it trusts for origins.

``read_tls`` is pure (text in, problems out); ``tls_file_problems`` looks at the file
system (the origin CA file must be a readable regular file), for ``config check`` and
``up``. Patterns follow ``forwarder.intercept``: "example.com" and "*.example.com" both
mean the domain and every name under it, as the local CA's name constraints do.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from atlantic.client.config import ConfigProblem, TlsSettings, _Reader
from atlantic.forwarder.intercept import MAX_PATTERNS, normalize_pattern

__all__ = ["check_intercept", "read_tls", "tls_file_problems", "with_tls_options"]

_EXAMPLE = 'such as ["*.example-video.com"]'


def check_intercept(patterns: list[Any]) -> tuple[tuple[str, ...], list[str]]:
    """The usable patterns (de-duplicated, as written) and one line per unusable one."""
    problems: list[str] = []
    if len(patterns) > MAX_PATTERNS:
        return (), [f"{len(patterns)} domains: at most {MAX_PATTERNS} can be intercepted"]
    out: list[str] = []
    for item in patterns:
        try:
            normalize_pattern(item)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        item = item.strip().lower()
        if item not in out:
            out.append(item)
    return tuple(out), problems


def _path(r: _Reader, key: str, default: Path | None, expect: str) -> Path | None:
    value = r.get(key, str, None, expect)
    if value is None:
        return default
    if not value.startswith("/") or "\0" in value or ".." in value.split("/") or len(value) > 4096 or value == "/":
        r._bad(key, f"expected {expect}, got {value[:60]!r}")
        return default
    return Path(value)


def read_tls(table: dict[str, Any], problems: list[ConfigProblem]) -> TlsSettings:
    """The [tls] table, every problem recorded in ``problems``."""
    d = TlsSettings()
    r = _Reader(table, "tls", problems)
    raw = r.get("intercept", list, [], f"a list of domains {_EXAMPLE}")
    intercept, bad = check_intercept(raw)
    for line in bad:
        r._bad("intercept", f"expected domains {_EXAMPLE}: {line}")
    settings = TlsSettings(
        intercept=intercept,
        ca_dir=_path(r, "ca_dir", d.ca_dir, "an absolute directory path such as /var/lib/atlantic/ca"),
        origin_ca_file=_path(r, "origin_ca_file", None, "an absolute path of a PEM file of CA certificates"),
    )
    r.unknown_keys()
    return settings


def tls_file_problems(tls: TlsSettings, key: str = "tls.origin_ca_file") -> list[ConfigProblem]:
    """The origin CA file, if set, must be a readable regular file (one problem if not)."""
    path = tls.origin_ca_file
    if path is None:
        return []
    try:
        st = os.stat(path)
    except OSError as exc:
        return [ConfigProblem(key, f"cannot read {path}: {exc.strerror}: name a PEM file of CA certificates")]
    if not stat.S_ISREG(st.st_mode):
        return [ConfigProblem(key, f"{path} is not a regular file: name a PEM file of CA certificates")]
    if not os.access(path, os.R_OK):
        return [ConfigProblem(key, f"{path} is not readable by this user: make it readable (chmod 644 {path})")]
    return []


def with_tls_options(tls: TlsSettings, intercept: list[str] | None,
                     origin_ca: str | None) -> tuple[TlsSettings, str | None]:
    """``tls`` with the command line's ``--intercept`` (replacing the file's list) and
    ``--origin-ca``; or the first problem as one line."""
    if intercept:
        patterns, bad = check_intercept(intercept)
        if bad:
            return tls, f"--intercept: {bad[0]}"
        tls = replace(tls, intercept=patterns)
    if origin_ca is not None:
        tls = replace(tls, origin_ca_file=Path(os.path.abspath(origin_ca)))
        if problems := tls_file_problems(tls, "--origin-ca"):
            return tls, str(problems[0])
    return tls, None
