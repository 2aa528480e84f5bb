"""Entry point of the ``atlantic`` command.

``atlantic status [--json]`` is answered here without importing typer or rich (about
150 ms of imports): scripts and monitors call it often and it must answer in
milliseconds. Everything else goes to the typer application in ``cli``.
"""

from __future__ import annotations

import json
import sys


def _fast_status(as_json: bool) -> int:
    """`atlantic status [--json]` without importing typer or rich: answers in milliseconds."""
    from atlantic.client.config import ConfigError
    from atlantic.client.config_check import load_config
    from atlantic.client.lifecycle import status as daemon_status

    try:
        cfg = load_config(secrets=False)  # status needs no password (and others cannot read it)
    except ConfigError as exc:
        print(f"atlantic: {exc}", file=sys.stderr)
        return 1
    report = daemon_status(cfg)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        from atlantic.client.report import format_status

        print(format_status(report))
    return 3 if report.get("state") != "up" and report.get("problem") else 0


def main() -> None:
    """Entry point of the console script and of ``python -m atlantic``."""
    args = sys.argv[1:]
    if args[:1] == ["status"] and set(args[1:]) <= {"--json"}:
        sys.exit(_fast_status("--json" in args))
    from atlantic.client.cli import main as cli_main

    cli_main()
