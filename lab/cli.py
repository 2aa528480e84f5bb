"""`atlantic lab ...`: build, use and remove the network-namespace test lab (needs root)."""

from __future__ import annotations

import os
import subprocess
import time

import typer

from atlantic.lab.lab import PROXY_ACTIONS, LabError, current, down, proxy_control, up
from atlantic.lab.procs import ns_exec_argv
from atlantic.lab.topology import ALL_ROLES, render_exports

lab_app = typer.Typer(
    name="lab",
    help="Network-namespace lab: client, router (adds delay), proxy (Squid + nghttpx), "
         "proxy2 (a second Squid), origin (nginx). Everything lives in namespaces named "
         "atl-*; the host's own network is never touched. `atlantic lab proxy 1|2 "
         "stop|start|blackhole|heal` fails and restores an upstream proxy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(1)


def _running():
    env = current()
    if env is None:
        raise _fail("the lab is not up; run `atlantic lab up` first")
    return env


@lab_app.command("up")
def up_cmd(
    delay_ms: float = typer.Option(20.0, "--delay-ms", min=0, max=5000,
                                   help="One-way delay the router adds to every packet "
                                        "(RTT between two hosts = 2x this)."),
    rate_mbit: float = typer.Option(None, "--rate-mbit", min=0.1,
                                    help="Limit every router link to this rate (tbf)."),
) -> None:
    """Bring the lab up, or adjust the running lab's delay and rate."""
    t0 = time.monotonic()
    try:
        env = up(delay_ms=delay_ms, rate_mbit=rate_mbit)
    except LabError as e:
        raise _fail(str(e)) from None
    rate = f", {env.rate_mbit:g} Mbit/s" if env.rate_mbit else ""
    typer.echo(f"lab up in {time.monotonic() - t0:.1f}s: delay {env.delay_ms:g} ms one-way"
               f"{rate}; proxy {env.proxy_url}, h2 proxy {env.h2_proxy_url}, "
               f"proxy 2 {env.proxy2_url}")
    typer.echo("use it: `atlantic lab shell`, `atlantic lab exec -- CMD`, "
               "or `eval \"$(atlantic lab env)\"`")


@lab_app.command("down")
def down_cmd() -> None:
    """Remove the lab completely (namespaces, processes, /etc/netns dirs, state)."""
    try:
        down()
    except LabError as e:
        raise _fail(str(e)) from None
    typer.echo("lab down")


@lab_app.command("env")
def env_cmd() -> None:
    """Print the lab's LAB_* variables as shell export lines."""
    typer.echo(render_exports(_running().as_env()), nl=False)


def _exec(ns: str, argv: list[str]) -> int:
    env = {**os.environ, **_running().as_env()}
    try:
        return subprocess.call(ns_exec_argv(ns, argv), env=env)
    except KeyboardInterrupt:
        return 130


@lab_app.command("shell")
def shell_cmd(
    ns: str = typer.Option("client", "--ns", help=f"Namespace: {', '.join(ALL_ROLES)}."),
) -> None:
    """Open an interactive shell in a lab namespace with the LAB_* variables exported."""
    _check_ns(ns)
    raise typer.Exit(_exec(ns, [os.environ.get("SHELL", "/bin/bash"), "-i"]))


@lab_app.command("exec", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})
def exec_cmd(
    cmd: list[str] = typer.Argument(..., help="The command, after `--`."),
    ns: str = typer.Option("client", "--ns", help=f"Namespace: {', '.join(ALL_ROLES)}."),
) -> None:
    """Run a command in a lab namespace (client by default) with the LAB_* variables.

    Example: atlantic lab exec -- curl -x "$LAB_PROXY_URL" http://origin.test/small
    (quote $ so it expands inside). The command's exit code is passed through.
    """
    _check_ns(ns)
    raise typer.Exit(_exec(ns, cmd))


def _check_ns(ns: str) -> None:
    if ns not in ALL_ROLES:
        raise _fail(f"unknown namespace {ns!r}; pick one of {', '.join(ALL_ROLES)}")


@lab_app.command("proxy")
def proxy_cmd(
    n: str = typer.Argument(..., metavar="1|2", help="1: proxy.test (Squid + nghttpx), "
                                                      "2: proxy2.test (Squid)."),
    action: str = typer.Argument(..., metavar="|".join(PROXY_ACTIONS)),
) -> None:
    """Fail or restore one upstream proxy of the running lab (affects every user of the lab).

    stop: its Squid exits, connects are refused (proxy 1: its nghttpx too).

    start: started again. status: print its state, change nothing.

    blackhole: the router silently drops all packets to or from its address.

    lossy: the router refuses 30% of new connections to it (a flaky exit).

    heal: undo blackhole or lossy. (A blackholed proxy's connects time out, like a vanished exit.)

    Each is safe twice; `lab up` keeps them as they are, `lab down` clears them.
    """
    if n not in ("1", "2"):
        raise _fail(f"no proxy {n!r} in the lab; pick 1 or 2")
    try:
        state = proxy_control(int(n), action)
    except LabError as e:
        raise _fail(str(e)) from None
    typer.echo(state.describe())
