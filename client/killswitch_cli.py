"""``atlantic killswitch apply|remove|status``: the kill switch on its own, before the daemon.

``apply`` renders the kill switch from the config as the daemon would before it knows
more (:func:`atlantic.client.seal.killswitch_config`): loopback, the TUN, internal
interfaces, LAN and DHCP when configured, and marked TCP to each proxy whose address is
literal or remembered from an earlier run; everything else is refused. It is what
``atlantic-killswitch.service`` runs at boot, before any network is up; the daemon later
replaces the table atomically, and ``atlantic down`` (or ``remove``) lifts it. Applying
twice is the same as once (one ``nft -f`` transaction replaces the table).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

killswitch_app = typer.Typer(
    help="The kill switch alone (boot before the network: atlantic-killswitch.service).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file (default: $ATLANTIC_CONFIG or /etc/atlantic/atlantic.toml)."),
]


def _fail(message: str) -> None:
    typer.echo(f"atlantic: {message}", err=True)
    raise typer.Exit(1)


def _root(what: str) -> None:
    if os.geteuid() != 0:
        _fail(f"`atlantic killswitch {what}` changes nftables and needs root: run `sudo atlantic killswitch {what}`")


def _config(config: str | None):
    from atlantic.client.config import ConfigError
    from atlantic.client.config_check import load_config

    try:
        return load_config(config, secrets=False)  # only hosts and ports are needed
    except ConfigError as exc:
        _fail(str(exc))


def boot_config(cfg):
    """The kill switch for ``cfg`` before the daemon runs, and the proxies it cannot name."""
    from atlantic.client import seal

    upstreams = seal.upstreams_of(cfg)
    pinned = {**seal.load_pins(seal.pins_file(cfg)), **seal.literal_addresses(upstreams)}
    unknown = [u.host for u in upstreams if not u.is_direct and u.host not in pinned]
    return seal.killswitch_config(cfg, upstreams, pinned), unknown


@killswitch_app.command("apply")
def apply(config: ConfigOpt = None) -> None:
    """Block everything but loopback, LAN/DHCP as configured and the proxies (safe twice)."""
    _root("apply")
    cfg = _config(config)
    from atlantic.client.state import StatePaths, is_daemon_alive, read_state
    from atlantic.system import killswitch

    state = read_state(StatePaths.for_namespace(cfg.daemon.state_dir))
    if state and is_daemon_alive(int(state.get("pid", 0))):
        _fail(f"Atlantic is up (pid {state['pid']}) and its own kill switch is in place, which this "
              "would replace with the boot-time one: nothing done")
    ks, unknown = boot_config(cfg)
    try:
        killswitch.apply(ks)
    except killswitch.KillSwitchError as exc:
        _fail(str(exc))
    allowed = ", ".join(f"{e.address}:{e.port}" for e in ks.upstream) or ("anywhere (direct)" if ks.direct else "none")
    typer.echo(f"kill switch on: only marked traffic to the proxy leaves ({allowed})"
               + (f"; no address known yet for {', '.join(unknown)} (the daemon looks it up at start)" if unknown else ""))


@killswitch_app.command("remove")
def remove() -> None:
    """Lift the kill switch (nothing happens when it is not in place; the daemon puts its own back)."""
    _root("remove")
    from atlantic.system import killswitch

    try:
        killswitch.remove()
    except killswitch.KillSwitchError as exc:
        _fail(str(exc))
    typer.echo("kill switch off")


@killswitch_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False) -> None:
    """Whether the kill switch is in place, and what it has blocked (exit 3 when it is not)."""
    _root("status")
    from atlantic.system import killswitch

    try:
        active = killswitch.is_active()
        counters = killswitch.counters() if active else None
    except killswitch.KillSwitchError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"active": active, **(counters or {})}, sort_keys=True))
    elif active:
        c = counters or {}
        typer.echo(f"kill switch on: {c.get('blocked_packets', 0)} packets blocked "
                   f"({c.get('blocked_dns_packets', 0)} of them DNS)")
    else:
        typer.echo("kill switch off")
    if not active:
        raise typer.Exit(3)
