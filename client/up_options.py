"""What ``atlantic up`` makes of its options, without typer: the config in force and the
one-line refusals.

Both the typer command (``cli.up``) and the daemon's own entry (``main.py``'s fast path
for ``up --foreground``, the command systemd and ``start_background`` run) call these, so
the two accept and refuse exactly alike. The daemon runs for days, and typer with the
pydantic and rich it loads to parse options held about 12 MB of its resident memory for
nothing (lab, RSS at start 54 -> 42 MB: bench/results/suite-20261201-lean/).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

__all__ = ["UsageError", "PASSWORD_IN_ARGV_WARNING", "FOREGROUND_OPTIONS", "foreground", "load", "needs_root",
           "parse_foreground", "with_tls"]

PASSWORD_IN_ARGV_WARNING = (
    "atlantic: warning: a password in --upstream is visible to every local user (ps, /proc); "
    "put it in the file upstream.password_file names instead")
# `up`'s options, each with its short form if any and whether it may repeat; `--foreground`
# is the flag that selects the fast path. tests/test_up_options.py holds this equal to typer's.
FOREGROUND_OPTIONS = {"--upstream": ("-u", True), "--metrics": (None, False), "--intercept": (None, True),
                      "--origin-ca": (None, False), "--config": ("-c", False)}


class UsageError(Exception):
    """A refusal for the user: one line, without the "atlantic: " prefix."""


def needs_root(what: str) -> str | None:
    """The refusal for a non-root caller of ``atlantic what``, or None when running as root."""
    if os.geteuid() == 0:
        return None
    return (f"`atlantic {what}` changes routing (or builds network namespaces) and needs root: "
            f"run `sudo atlantic {what}`")


def load(config: str | None, upstreams: list[str] | None = None, *, secrets: bool = True,
         metrics: str | None = None):
    """The config file (``config``, else the default) with ``--upstream`` and ``--metrics``
    applied; raises :class:`UsageError`. Warns on stderr of a password in ``--upstream``."""
    from atlantic.client.config import ConfigError
    from atlantic.client.config_check import load_config
    from atlantic.client.config_upstream import check_upstream_url
    from atlantic.pool.upstream import parse_upstream

    try:
        cfg = load_config(config, secrets=secrets)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if upstreams:
        for url in upstreams:
            if (problem := check_upstream_url(url)) is not None:
                raise UsageError(f"--upstream: {problem}")
            if parse_upstream(url).password is not None:
                print(PASSWORD_IN_ARGV_WARNING, file=sys.stderr)
        if len(upstreams) > 1 and "direct" in upstreams:
            raise UsageError("--upstream: direct cannot be one of several upstreams: failing over to it would "
                             "reveal this machine's address; list proxies only")
        cfg = cfg.with_upstreams(upstreams)
    if metrics is not None:
        from atlantic.client.metrics import MetricsError, parse_listen

        try:
            parse_listen(metrics)
        except MetricsError as exc:
            raise UsageError(f"--metrics: {exc}") from None
        cfg = replace(cfg, daemon=replace(cfg.daemon, metrics=metrics))
    return cfg


def with_tls(cfg, intercept: list[str] | None, origin_ca: str | None):
    """``cfg`` with ``--intercept`` / ``--origin-ca``; with domains to intercept, the local CA
    must exist. Raises :class:`UsageError`."""
    from atlantic.client.ca_paths import CERT_FILE, KEY_FILE, ca_dir
    from atlantic.client.config_tls import with_tls_options

    tls, problem = with_tls_options(cfg.tls, intercept, origin_ca)
    if problem is not None:
        raise UsageError(problem)
    if tls.intercept:
        directory = ca_dir(replace(cfg, tls=tls))
        if not ((directory / KEY_FILE).exists() and (directory / CERT_FILE).exists()):
            raise UsageError(
                f"intercepting {', '.join(tls.intercept)} needs the local CA, and {directory} holds none: "
                "run `sudo atlantic ca init` (then `sudo atlantic ca install` so applications trust it)")
    return replace(cfg, tls=tls)


def parse_foreground(args: list[str]) -> dict[str, list[str]] | None:
    """``up``'s arguments (after ``up``) as {option: values} when they include ``--foreground``
    and nothing but :data:`FOREGROUND_OPTIONS` (``--opt value``, ``--opt=value`` or the short
    form); None for anything else (``--help``, a typo, no ``--foreground``): typer answers it."""
    short = {s: long for long, (s, _) in FOREGROUND_OPTIONS.items() if s}
    out: dict[str, list[str]] = {}
    foreground = False
    rest = iter(args)
    for arg in rest:
        if arg == "--foreground":
            foreground = True
            continue
        name, eq, value = arg.partition("=")
        name = short.get(name, name)
        if name not in FOREGROUND_OPTIONS:
            return None
        if not eq:
            value = next(rest, None)
            if value is None or value.startswith("-"):
                return None
        if out.get(name) and not FOREGROUND_OPTIONS[name][1]:
            out[name] = []  # typer keeps the last of a repeated single option
        out.setdefault(name, []).append(value)
    return out if foreground else None


def foreground(opts: dict[str, list[str]]) -> int:
    """``atlantic up --foreground`` with :func:`parse_foreground`'s options: run the daemon in
    this process until it stops; the exit code. A refusal is one line on stderr, as typer's
    ``up`` prints it."""
    from atlantic.client.lifecycle import LifecycleError, run_foreground

    def last(name: str) -> str | None:
        return opts[name][-1] if opts.get(name) else None

    try:
        if (refusal := needs_root("up")) is not None:
            raise UsageError(refusal)
        cfg = load(last("--config"), opts.get("--upstream"), metrics=last("--metrics"))
        run_foreground(with_tls(cfg, opts.get("--intercept"), last("--origin-ca")))
    except (UsageError, LifecycleError) as exc:
        print(f"atlantic: {exc}", file=sys.stderr)
        return 1
    return 0
