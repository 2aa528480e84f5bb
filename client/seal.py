"""What the kill switch lets out, as the config describes it, and the proxy addresses it
remembers across boots.

Shared by the daemon and ``atlantic killswitch apply`` (the early-boot unit), so both
seal the machine the same way: loopback, the TUN, internal interfaces, LAN and DHCP as
configured, and marked TCP to each proxy's address. A proxy named by address needs
nothing more; one named by host name needs its address before the network is up, so the
daemon keeps every address it resolved in a small file (``pins_file``) that the early
unit reads. With no address for a proxy, the early kill switch lets nothing reach it:
the daemon looks it up when it starts (falling back to the remembered address when the
lookup fails) and then replaces the table with its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from pathlib import Path

from atlantic.client.config import Config
from atlantic.pool.upstream import Upstream, parse_upstream
from atlantic.system import killswitch

log = logging.getLogger("atlantic")

DEFAULT_STATE_DIR = Path("/run/atlantic")
PERSISTENT_DIR = Path("/var/lib/atlantic")  # the unit's StateDirectory=, kept across boots
PINS_NAME = "upstream-addresses.json"
MAX_PINS = 64  # several configs (a lab, a second namespace) share the file; the newest stay


def upstreams_of(cfg: Config) -> list[Upstream]:
    """The configured upstreams, parsed (no secret needed: only host and port are used)."""
    return [parse_upstream(u.url) for u in cfg.upstreams]


def killswitch_config(cfg: Config, upstreams: list[Upstream], pinned: dict[str, str],
                      resolvers: tuple[str, ...] = ()) -> killswitch.KillSwitchConfig:
    """The kill switch for ``cfg`` (pure): proxies whose host is not in ``pinned`` get no
    endpoint (nothing may reach them); ``resolvers`` may answer marked DNS."""
    endpoints = tuple(dict.fromkeys(killswitch.Endpoint(pinned[u.host], u.port)
                                    for u in upstreams if not u.is_direct and u.host in pinned))
    cap = cfg.capture
    return killswitch.KillSwitchConfig(
        tun=cfg.tun.name, fwmark=cfg.routing.fwmark, upstream=endpoints, direct=upstreams[0].is_direct,
        allow_lan=cap.lan, allow_dhcp=cap.allow_dhcp, allow_interfaces=cap.allow_interfaces,
        resolvers=resolvers,
    )


def literal_addresses(upstreams: list[Upstream]) -> dict[str, str]:
    """Proxies named by address: host -> the address itself (pure)."""
    out = {}
    for u in upstreams:
        if u.is_direct:
            continue
        with contextlib.suppress(ValueError):
            out[u.host] = str(ipaddress.ip_address(u.host))
    return out


def pins_file(cfg: Config) -> Path:
    """Where the addresses are kept: /var/lib/atlantic for the system daemon (its
    state_dir /run/atlantic is gone after a reboot), else beside a custom state_dir."""
    if cfg.daemon.state_dir == DEFAULT_STATE_DIR:
        return PERSISTENT_DIR / PINS_NAME
    return cfg.daemon.state_dir / PINS_NAME


def load_pins(path: Path) -> dict[str, str]:
    """host -> address as last resolved; {} when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        rows = data["addresses"]
        return {str(h): str(ipaddress.ip_address(r["address"])) for h, r in rows.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def merge_pins(old: dict, pinned: dict[str, str], now: float) -> dict:
    """The file's rows with ``pinned`` updated at wall time ``now``, the newest ``MAX_PINS`` kept (pure)."""
    rows = {h: r for h, r in (old.get("addresses") or {}).items() if isinstance(r, dict)}
    for host, addr in pinned.items():
        if host != addr:  # a literal address needs no remembering
            rows[host] = {"address": addr, "at": round(now)}
    newest = sorted(rows.items(), key=lambda kv: kv[1].get("at", 0), reverse=True)[:MAX_PINS]
    return {"addresses": dict(sorted(newest))}


def save_pins(path: Path, pinned: dict[str, str], now: float) -> None:
    """Remember ``pinned`` (atomically, 0600 in a 0700 directory); a failure is one warning line."""
    if all(h == a for h, a in pinned.items()):
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        text = json.dumps(merge_pins(old if isinstance(old, dict) else {}, pinned, now), indent=2)
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot remember the proxy addresses in %s (the early-boot kill switch will not "
                    "know them): %s", path, exc.strerror or exc)


def resolve_or_remembered(upstreams: list[Upstream], path: Path) -> tuple[dict[str, str], list[str]]:
    """Every proxy's address, looked up as ``outbound.resolve`` does; a name that does not
    resolve now (the early-boot kill switch refuses the machine's own DNS) falls back to
    the address remembered in ``path``. Returns the pins and the hosts taken from the file
    (the daemon looks those up again over the marked path once it is up)."""
    from atlantic.client.outbound import resolve

    try:
        return resolve(upstreams), []
    except RuntimeError:
        remembered = load_pins(path)
    pinned: dict[str, str] = {}
    stale: list[str] = []
    for u in upstreams:
        if u.is_direct or u.host in pinned:
            continue
        try:
            pinned.update(resolve([u]))
        except RuntimeError as exc:
            if u.host not in remembered:
                raise RuntimeError(f"{exc}, and no address of it is remembered in {path}") from None
            pinned[u.host] = remembered[u.host]
            stale.append(u.host)
            log.info("%s now: using %s, its address when last resolved (looked up again once up)", exc, pinned[u.host])
    return pinned, stale
