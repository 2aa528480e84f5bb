"""The ``atlantic`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from atlantic import __version__
from atlantic.client import up_options
from atlantic.client.ca import ca_app

app = typer.Typer(
    name="atlantic",
    help=(
        "Route this whole machine through an upstream proxy (or directly), over warm, "
        "shared connections, without leaks.\n\n"
        "Start with `sudo atlantic up --upstream http://user@gateway:port`, check with "
        "`atlantic status`, stop with `sudo atlantic down`. Settings live in "
        "/etc/atlantic/atlantic.toml (see `atlantic config check`); the proxy password goes in "
        "the file its upstream.password_file names (root's, chmod 600), never on the command line, "
        "where every local user can read it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check the configuration file.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(ca_app, name="ca")
from atlantic.client.killswitch_cli import killswitch_app  # noqa: E402
app.add_typer(killswitch_app, name="killswitch")

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="Config file (default: $ATLANTIC_CONFIG or /etc/atlantic/atlantic.toml)."),
]


def fail(message: str, code: int = 1) -> None:
    """Print one clear line to stderr and exit non-zero."""
    typer.echo(f"atlantic: {message}", err=True)
    raise typer.Exit(code)


def _require_root(what: str) -> None:
    if (refusal := up_options.needs_root(what)) is not None:
        fail(refusal)


def _load(config: str | None, upstreams: list[str] | None = None, *, secrets: bool = True,
          metrics: str | None = None):
    try:
        return up_options.load(config, upstreams, secrets=secrets, metrics=metrics)
    except up_options.UsageError as exc:
        fail(str(exc))


@app.command()
def up(
    upstream: Annotated[Optional[list[str]], typer.Option(
        "--upstream", "-u",
        help="`direct`, or the proxy URL http://user@host:port; repeat for standbys in priority order "
             "(overrides the config file's urls; the password comes from upstream.password_file: "
             "a password here is visible to every local user).",
    )] = None,
    metrics: Annotated[Optional[str], typer.Option(
        "--metrics", help="Serve Prometheus /metrics on IP:PORT, e.g. 127.0.0.1:9477 (off by default).",
    )] = None,
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Run the daemon in this process (as systemd does) instead of in the background.",
    )] = False,
    intercept: Annotated[Optional[list[str]], typer.Option(
        "--intercept", metavar="DOMAIN",
        help="Terminate HTTPS for DOMAIN and every name under it (*.DOMAIN), so it rides the pool; repeat "
             "for more (replaces \\[tls] intercept). Needs the local CA: `sudo atlantic ca init`.",
    )] = None,
    origin_ca: Annotated[Optional[str], typer.Option(
        "--origin-ca", metavar="FILE", help="A PEM file of CAs trusted for origins, besides the system's.",
    )] = None,
    config: ConfigOpt = None,
) -> None:
    """Capture every TCP connection of this machine and send it through the upstream."""
    _require_root("up")
    cfg = _load(config, upstream, metrics=metrics)
    cfg = _with_tls(cfg, intercept, origin_ca)
    from atlantic.client import lifecycle

    try:
        if foreground:
            lifecycle.run_foreground(cfg)
        else:
            info = lifecycle.start_background(cfg, config)
            typer.echo(f"Atlantic is up (pid {info['pid']}): every TCP flow goes to {info['upstream']} via {info['tun']}.")
    except lifecycle.LifecycleError as exc:
        fail(str(exc))


def _with_tls(cfg, intercept: list[str] | None, origin_ca: str | None):
    try:
        return up_options.with_tls(cfg, intercept, origin_ca)
    except up_options.UsageError as exc:
        fail(str(exc))


@app.command()
def down(config: ConfigOpt = None) -> None:
    """Stop Atlantic and put routing back exactly as it was (safe to run twice, or after a crash)."""
    _require_root("down")
    cfg = _load(config, secrets=False)
    from atlantic.client import lifecycle

    try:
        message = lifecycle.stop(cfg)
    except lifecycle.LifecycleError as exc:
        fail(str(exc))
    typer.echo(message)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Show whether Atlantic is up, where traffic goes, and its counters."""
    # client/main.py answers `status` without typer; a change here must go there too
    # (tests/test_cli_fast.py holds the two byte for byte alike).
    cfg = _load(config, secrets=False)
    from atlantic.client import lifecycle

    report = lifecycle.status(cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        from atlantic.client.report import format_status

        typer.echo(format_status(report))
    if report.get("state") != "up" and report.get("problem"):
        raise typer.Exit(3)


@app.command()
def demo(
    chunks: Annotated[int, typer.Option(min=1, max=200, help="Chunks of 2 MB per download workload.")] = 30,
    delay_ms: Annotated[float, typer.Option(min=0, max=500, help="One-way delay in the lab (RTT is twice this).")] = 20,
    keep_lab: Annotated[bool, typer.Option("--keep-lab", help="Leave the lab up afterwards.")] = False,
    ytdlp: Annotated[bool, typer.Option("--ytdlp/--no-ytdlp", help="Include the yt-dlp HLS workload.")] = True,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json-out", help="Where to write the results as JSON (default: /run/atlantic/demo.json).")] = None,
) -> None:
    """Show, in the lab, how much faster chunked downloads and yt-dlp get through a proxy with Atlantic.

    Results go to a JSON file first (default /run/atlantic/demo.json; --json-out FILE); the table is printed from it.
    """
    _require_root("demo")
    from atlantic.client.demo import run_demo
    from atlantic.lab import LabError

    try:
        run_demo(chunks=chunks, delay_ms=delay_ms, keep_lab=keep_lab, ytdlp=ytdlp, json_out=json_out)
    except (LabError, RuntimeError) as exc:
        fail(str(exc))


@app.command()
def version() -> None:
    """Print Atlantic's version."""
    typer.echo(f"atlantic {__version__}")


@config_app.command("check")
def config_check(
    path: Annotated[Optional[Path], typer.Argument(help="File to check (default: the one `atlantic up` would read).")] = None,
) -> None:
    """Validate a config file: every problem is printed as one line with the key and what is expected."""
    from atlantic.client.config_check import check_config_file, config_path

    file, must_exist = config_path(path)
    cfg, problems = check_config_file(file, must_exist)
    for problem in problems:
        typer.echo(f"{file}: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    where = file if cfg.source != "defaults" else f"{file} (absent: defaults apply)"
    typer.echo(f"{where}: OK (upstream {_redacted(cfg.upstream.url)}, device {cfg.tun.name}, MTU {cfg.tun.mtu})")


def _redacted(url: str) -> str:
    from atlantic.pool.upstream import parse_upstream

    return parse_upstream(url).redacted()


def _add_lab() -> None:
    from atlantic.lab.cli import lab_app

    app.add_typer(lab_app, name="lab", help="The network-namespace test lab: client, router (delay), Squid + nghttpx, nginx origin.")


_add_lab()


def main() -> None:
    """Run the typer application (the full command line)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
