"""Entry point of the ``atlantic`` command.

``atlantic status [--json] [--config FILE]`` and ``atlantic version`` are answered here
without typer, rich or the config module: scripts and monitors call ``status`` often, and
those imports cost several times Python's own ~30 ms start. ``atlantic up --foreground``
(the daemon, as systemd and ``up`` start it) goes to ``up_options`` without typer, so the
daemon does not carry typer, rich and pydantic in memory for its lifetime. Everything
else goes to the typer application in ``cli``.

A config file ``status`` can vouch for (absent, or in the strict subset of TOML and of
the settings' rules that ``config_fast`` reads: the shipped file, and a laptop's with
proxy URLs, a password file, [health], [pool], [capture], [tls] ...) is read without the
config modules; any other file goes through the full loader, so ``status`` accepts and
refuses exactly the files every other command does, with the same error line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG_ENV = "ATLANTIC_CONFIG"  # = config.CONFIG_ENV and DEFAULT_CONFIG_PATH (a test holds them equal)
DEFAULT_CONFIG_PATH = "/etc/atlantic/atlantic.toml"
DEFAULT_STATE_DIR = "/run/atlantic"
_SIMPLE_CONFIG_BYTES = 1 << 16


def _parse_status_args(args: list[str]) -> tuple[bool, str | None] | None:
    """(--json given, --config value) for ``status``'s own options, or None: let typer parse."""
    as_json, config = False, None
    rest = iter(args)
    for arg in rest:
        if arg == "--json":
            as_json = True
        elif arg in ("--config", "-c"):
            config = next(rest, None)
            if config is None or config.startswith("-"):
                return None
        elif arg.startswith("--config="):
            config = arg.removeprefix("--config=")
        else:
            return None
    return as_json, config


def _simple_state_dir(explicit: str | None) -> str | None:
    """``daemon.state_dir`` of a config known to be valid without the full loader, or None."""
    from atlantic.client.state import unsafe_dir_reason

    path = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    if not os.path.lexists(path):
        state_dir = None if explicit or os.environ.get(CONFIG_ENV) else DEFAULT_STATE_DIR
    else:
        state_dir = _simple_file_state_dir(path)
    if state_dir is None or unsafe_dir_reason(Path(state_dir)) is not None:
        return None
    return state_dir


def _simple_file_state_dir(path: str) -> str | None:
    """``daemon.state_dir`` of the file at ``path`` if ``config_fast`` vouches for it, else None."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        # Others may not write it (the loader's rule); a password inline is never vouched for.
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022):
            return None
        try:
            data = f.read(_SIMPLE_CONFIG_BYTES + 1)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    if len(data) > _SIMPLE_CONFIG_BYTES:
        return None
    from atlantic.client.config_fast import vouched_state_dir

    return vouched_state_dir(text)


def status_report(state_dir: str) -> dict:
    """What ``lifecycle.status`` says for a daemon under ``state_dir`` (never raises), without
    importing the config module."""
    from atlantic.client.control import daemon_status
    from atlantic.client.state import StatePaths

    return daemon_status(StatePaths.for_namespace(Path(state_dir)))


def _echo(text: str, stream) -> None:
    """``typer.echo``'s output: click drops ANSI colour codes when the stream is no terminal."""
    if "\x1b" in text and not stream.isatty():
        import re

        text = re.sub(r"\033\[[;?0-9]*[a-zA-Z]", "", text)
    stream.write(text + "\n")
    stream.flush()


def fast_status(as_json: bool, config: str | None) -> int:
    """``atlantic status``: prints what the typer command prints; returns its exit code."""
    state_dir = _simple_state_dir(config)
    if state_dir is None:
        from atlantic.client.config import ConfigError
        from atlantic.client.config_check import load_config

        try:
            cfg = load_config(config, secrets=False)  # status needs no password (and others cannot read it)
        except ConfigError as exc:
            _echo(f"atlantic: {exc}", sys.stderr)
            return 1
        state_dir = str(cfg.daemon.state_dir)
    report = status_report(state_dir)
    if as_json:
        import json

        _echo(json.dumps(report, indent=2, sort_keys=True), sys.stdout)
    else:
        from atlantic.client.report import format_status

        _echo(format_status(report), sys.stdout)
    return 3 if report.get("state") != "up" and report.get("problem") else 0


def main() -> None:
    """Entry point of the console script and of ``python -m atlantic``."""
    args = sys.argv[1:]
    if args == ["version"]:
        from atlantic import __version__

        _echo(f"atlantic {__version__}", sys.stdout)
        sys.exit(0)
    if args[:1] == ["status"] and (parsed := _parse_status_args(args[1:])) is not None:
        sys.exit(fast_status(*parsed))
    if args[:1] == ["up"] and "--foreground" in args:  # the daemon itself: it keeps no CLI in memory
        from atlantic.client import up_options

        if (opts := up_options.parse_foreground(args[1:])) is not None:
            sys.exit(up_options.foreground(opts))
    from atlantic.client.cli import main as cli_main

    cli_main()
