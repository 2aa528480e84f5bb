"""Atlantic's configuration: a TOML file, typed and validated on load.

The file is ``/etc/atlantic/atlantic.toml`` unless ``--config`` or ``ATLANTIC_CONFIG``
names another. Every key has a default, so no file at the default path means "direct
upstream, default device and routing". Command-line flags override the file.

Validation collects every problem (key + what is expected) instead of stopping at the
first, so ``atlantic config check`` can print them all. This module reads text (pure);
``config_check`` holds what touches the file system: which file, its mode, the password
file, the state directory.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/atlantic/atlantic.toml")
CONFIG_ENV = "ATLANTIC_CONFIG"


DEFAULT_DNS_RESOLVER = "9.9.9.9:53"  # Quad9: what non-A/AAAA queries go to, through the upstream


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config: where (``key``) and what is expected."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = problems
        first = problems[0] if problems else "invalid"
        more = f" (and {len(problems) - 1} more; run `atlantic config check`)" if len(problems) > 1 else ""
        super().__init__(f"{source}: {first}{more}")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where flows go: ``direct`` or a proxy URL (the password never printed).

    ``username_template`` renders provider usernames such as
    ``customer-{user}-cc-{country}-sessid-{session}-sesstime-{minutes}``; with
    ``session_minutes`` the session is sticky for that long, then rotated.
    """

    url: str = "direct"
    password_file: Path | None = None
    connect_timeout_s: float = 10.0
    ca_file: Path | None = None
    username_template: str | None = None
    country: str | None = None
    session_minutes: int | None = None
    key: str = "upstream"  # where in the file it came from, for messages: upstream or upstream[2]


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The shared upstream connection pool."""

    idle_timeout_s: float = 90.0
    # A system-wide client carries many applications' requests at once: an HTTP/1.1
    # connection holds one request at a time, so a low cap would make a short request
    # wait behind other applications' long downloads. Idle ones close after idle_timeout_s.
    max_per_endpoint: int = 128
    max_connections: int = 256
    warm_tunnels: int = 2
    ping_interval_s: float = 20.0
    # How plain-HTTP requests travel through an HTTP/1.1 proxy: "tunnel" (origin-form in a
    # kept CONNECT tunnel per origin: the proxy relays bytes, bodies splice end to end) or
    # "forward" (absolute-form proxy requests on shared connections). A proxy that refuses
    # CONNECT to a port gets that port's requests forwarded.
    plain_http: str = "tunnel"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What is captured and what may bypass: IPv6, UDP, the kill switch, LAN, ports.

    ``ipv6``: ``capture`` (through the TUN like IPv4) or ``block`` (fails at once).
    ``udp``: ``drop`` or ``reject`` (ICMP unreachable) for UDP other than DNS; QUIC (UDP
    443) is always rejected so browsers fall back to TCP at once. ``dns_resolver``:
    where queries Atlantic cannot answer itself go, as DNS over TCP through the upstream
    (with ``direct``, every query goes there over a marked connection). ``ports``: the ports
    the upstream carries (empty: all); flows to other ports follow ``other_ports``
    (``tunnel``: try anyway, ``reject``: reset at once with the reason in status).
    ``lockdown``: the kill switch outlives the daemon: a stop, a restart or ``atlantic down``
    leaves the machine closed until ``atlantic killswitch remove`` (no window while systemd
    restarts the service). ``tcp``: how TCP reaches the forwarder: ``redirect`` (the
    kernel's NAT sends each flow to the listener; no per-packet work in Python) or ``tun``
    (every packet through the TUN and the Python NAT, the system stack alone).
    """

    ipv6: str = "capture"
    tcp: str = "redirect"
    udp: str = "drop"
    kill_switch: bool = True
    lockdown: bool = False
    lan: tuple[str, ...] = ()
    allow_dhcp: bool = False
    allow_interfaces: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    other_ports: str = "tunnel"
    dns_resolver: str = DEFAULT_DNS_RESOLVER


@dataclass(frozen=True, slots=True)
class TunConfig:
    """The capture device: name, its /30 from 198.18.0.0/15, MTU and GSO offload."""

    name: str = "atl0"
    address: str = "198.18.0.1/30"
    address6: str = "fd00:a71a::1/126"
    mtu: int = 65520
    offload: bool = True


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Policy routing as wg-quick does it: marked daemon sockets use main, the rest ``table``."""

    table: int = 2026
    fwmark: int = 0x2026
    rule_priority: int = 32000


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Daemon behaviour: state directory, logging, flow timeouts and limits, metrics.

    ``max_flows`` 0 means "derived from the open-files limit"; ``max_open_files`` is the
    soft RLIMIT_NOFILE the daemon raises itself to at start (within the hard limit);
    ``metrics`` is where Prometheus ``/metrics`` is served (``IP:PORT``), None: off.
    """

    state_dir: Path = Path("/run/atlantic")
    log_level: str = "info"
    idle_timeout_s: float = 300.0
    head_timeout_s: float = 30.0
    max_flows: int = 0
    max_open_files: int = 65536
    metrics: str | None = None


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The ``[health]`` section: what the monitor probes, how often, how sure it must be.

    The default probe and echo URLs are public services (Cloudflare's 204 page and
    ip-api's JSON); ``echo_url = ""`` turns the exit check off; ``enabled = false`` turns
    the monitor off (one upstream only: there is nothing to fail over to then).
    """

    enabled: bool = True
    probe_url: str = "http://cp.cloudflare.com/generate_204"
    expected_status: int = 204
    echo_url: str | None = "http://ip-api.com/json/?fields=query,countryCode"
    probe_timeout_s: float = 3.0
    active_interval_s: float = 30.0
    standby_interval_s: float = 120.0
    echo_interval_s: float = 600.0
    fail_threshold: int = 2
    recover_successes: int = 3
    failback_hold_s: float = 60.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The ``[tls]`` section: opt-in TLS termination (``config_tls`` reads it).

    ``intercept``: domains whose HTTPS Atlantic terminates with its local CA so that it
    rides the pool ("example.com" and "*.example.com" both mean the domain and every
    name under it); empty (the default): nothing is terminated. ``ca_dir``: where the
    local CA lives; ``origin_ca_file``: a CA trusted for origins besides the system's.
    """

    intercept: tuple[str, ...] = ()
    ca_dir: Path = Path("/var/lib/atlantic/ca")
    origin_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)  # the first in priority order
    standbys: tuple[UpstreamConfig, ...] = ()  # the others, in priority order
    pool: PoolConfig = field(default_factory=PoolConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    tun: TunConfig = field(default_factory=TunConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    health: HealthSettings = field(default_factory=HealthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    source: str = "defaults"

    @property
    def upstreams(self) -> tuple[UpstreamConfig, ...]:
        """Every upstream in priority order (one, unless the file lists several)."""
        return (self.upstream, *self.standbys)

    def with_upstreams(self, urls: list[str]) -> Config:
        """This config with the upstream URLs replaced (``--upstream``, given once or more).

        The n-th URL keeps the n-th configured upstream's other settings (password file,
        username template, country, CA), so a flag changes where, not how.
        """
        old = self.upstreams
        new = [replace(old[i], url=url) if i < len(old) else UpstreamConfig(url=url, key=f"upstream[{i + 1}]")
               for i, url in enumerate(urls)]
        return replace(self, upstream=new[0], standbys=tuple(new[1:]))

    def with_upstream(self, url: str) -> Config:
        """This config with one upstream URL (a command-line override)."""
        return self.with_upstreams([url])


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _section(raw: dict[str, Any], name: str, problems: list[ConfigProblem]) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.append(ConfigProblem(name, "expected a table ([" + name + "])"))
        return {}
    return value


class _Reader:
    """Reads typed values from one TOML table, recording a problem for each bad one."""

    def __init__(self, table: dict[str, Any], prefix: str, problems: list[ConfigProblem]):
        self.table = table
        self.prefix = prefix
        self.problems = problems
        self.known: set[str] = set()

    def _bad(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(f"{self.prefix}.{key}", message))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expect: str) -> Any:
        self.known.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python; a number field must not accept `true`.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self._bad(key, f"expected {expect}, got {value!r}")
            return default
        if not isinstance(value, kind):
            self._bad(key, f"expected {expect}, got {value!r}")
            return default
        return value

    def number(self, key: str, default: float, lo: float, hi: float, *, integer: bool = False) -> Any:
        kind = int if integer else (int, float)
        what = "an integer" if integer else "a number"
        value = self.get(key, kind, default, f"{what} from {lo:g} to {hi:g}")
        if not lo <= value <= hi:
            self._bad(key, f"expected {what} from {lo:g} to {hi:g}, got {value!r}")
            return default
        return value

    def unknown_keys(self) -> None:
        for key in sorted(set(self.table) - self.known):
            self._bad(key, "unknown key (check the spelling; see `atlantic config check --help`)")


def _read_pool(table: dict[str, Any], problems: list[ConfigProblem]) -> PoolConfig:
    r = _Reader(table, "pool", problems)
    cfg = PoolConfig(
        idle_timeout_s=float(r.number("idle_timeout_s", 90.0, 1, 3600)),
        max_per_endpoint=r.number("max_per_endpoint", 128, 1, 1024, integer=True),
        max_connections=r.number("max_connections", 256, 1, 4096, integer=True),
        warm_tunnels=r.number("warm_tunnels", 2, 0, 64, integer=True),
        ping_interval_s=float(r.number("ping_interval_s", 20.0, 1, 600)),
        plain_http=_choice(r, "plain_http", ("tunnel", "forward"), "tunnel"),
    )
    r.unknown_keys()
    return cfg


def _choice(r: _Reader, key: str, choices: tuple[str, ...], default: str) -> str:
    value = r.get(key, str, default, "one of " + ", ".join(choices))
    if value not in choices:
        r._bad(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _str_list(r: _Reader, key: str, expect: str, check) -> tuple[str, ...]:
    value = r.get(key, list, [], f"a list of {expect}")
    out = []
    for item in value:
        try:
            out.append(check(item))
        except (ValueError, TypeError):
            r._bad(key, f"expected a list of {expect}, got {item!r}")
    return tuple(out)


def _resolver(r: _Reader) -> str:
    value = r.get("dns_resolver", str, DEFAULT_DNS_RESOLVER, "a resolver as address:port, e.g. 9.9.9.9:53")
    if value == DEFAULT_DNS_RESOLVER:  # valid; checking it would import the DNS stack (asyncio, ssl: ~40 ms)
        return value
    from atlantic.dns.intercept import parse_resolver

    try:
        parse_resolver(value)
    except ValueError as exc:
        r._bad("dns_resolver", f"expected a resolver as address:port, e.g. 9.9.9.9:53 ({exc})")
        return DEFAULT_DNS_RESOLVER
    return value


def _read_capture(table: dict[str, Any], problems: list[ConfigProblem]) -> CaptureConfig:
    r = _Reader(table, "capture", problems)

    def cidr(item) -> str:
        if not isinstance(item, str):
            raise TypeError
        return str(ipaddress.ip_network(item, strict=False))

    def ifname(item) -> str:
        if not isinstance(item, str) or not is_ifname(item.removesuffix("*")):
            raise ValueError
        return item

    def port(item) -> int:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
            raise ValueError
        return item

    cfg = CaptureConfig(
        ipv6=_choice(r, "ipv6", ("capture", "block"), "capture"),
        tcp=_choice(r, "tcp", ("redirect", "tun"), "redirect"),
        udp=_choice(r, "udp", ("drop", "reject"), "drop"),
        kill_switch=r.get("kill_switch", bool, True, "true or false"),
        lockdown=r.get("lockdown", bool, False, "true or false"),
        lan=_str_list(r, "lan", "network prefixes such as 192.168.1.0/24", cidr),
        allow_dhcp=r.get("allow_dhcp", bool, False, "true or false"),
        allow_interfaces=_str_list(r, "allow_interfaces", "interface names (e.g. docker0, br-*)", ifname),
        ports=_str_list(r, "ports", "port numbers from 1 to 65535", port),
        other_ports=_choice(r, "other_ports", ("tunnel", "reject"), "tunnel"),
        dns_resolver=_resolver(r),
    )
    if cfg.lockdown and not cfg.kill_switch:
        problems.append(ConfigProblem("capture.lockdown", "lockdown keeps the kill switch after a stop: it needs "
                                                          "capture.kill_switch = true"))
        cfg = replace(cfg, lockdown=False)
    r.unknown_keys()
    return cfg


IFNAMSIZ = 16  # <linux/if.h>, with the terminating NUL
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]+$")
TUN_PREFIX, TUN_PREFIX6 = 30, 126  # the TUN needs two addresses: its own and the NAT's virtual client


def is_ifname(name: str) -> bool:
    """A Linux interface name: 1-15 bytes of letters, digits, '.', '-', '_' (not . or ..)."""
    return (0 < len(name.encode()) < IFNAMSIZ and bool(_IFNAME.match(name)) and name.isascii()
            and name not in (".", ".."))


def _read_tun(table: dict[str, Any], problems: list[ConfigProblem]) -> TunConfig:
    r = _Reader(table, "tun", problems)
    name = r.get("name", str, "atl0", "an interface name of 1-15 letters, digits, '.', '-' or '_'")
    if not is_ifname(name):
        problems.append(ConfigProblem("tun.name", f"expected an interface name of 1-15 bytes of letters, digits, "
                                                  f"'.', '-' or '_' such as atl0, got {name[:40]!r}"))
        name = "atl0"
    # A wider prefix would route real addresses into the TUN from the main table (/0: everything,
    # the daemon's own upstream connection included); a narrower one has no room for two hosts.
    address = r.get("address", str, "198.18.0.1/30", "an IPv4 interface address with prefix, e.g. 198.18.0.1/30")
    try:
        iface = ipaddress.IPv4Interface(address)
        if iface.network.prefixlen != TUN_PREFIX:
            raise ValueError(f"the prefix must be /{TUN_PREFIX}: the TUN needs two addresses, and a wider "
                             "prefix routes real addresses into it")
        if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            raise ValueError("the address must be a host address of its network")
    except ValueError as exc:
        problems.append(ConfigProblem("tun.address", f"expected an IPv4 address with prefix such as 198.18.0.1/30 ({exc})"))
        address = "198.18.0.1/30"
    address6 = r.get("address6", str, "fd00:a71a::1/126", "an IPv6 address with prefix, e.g. fd00:a71a::1/126")
    try:
        iface6 = ipaddress.IPv6Interface(address6)
        if iface6.network.prefixlen != TUN_PREFIX6:
            raise ValueError(f"the prefix must be /{TUN_PREFIX6}: the TUN needs two addresses, and a wider "
                             "prefix routes real addresses into it")
        if iface6.ip == iface6.network.network_address:
            raise ValueError("the address must not be the network's first address")
    except ValueError as exc:
        problems.append(ConfigProblem("tun.address6", f"expected an IPv6 address with prefix such as fd00:a71a::1/126 ({exc})"))
        address6 = "fd00:a71a::1/126"
    mtu = r.number("mtu", 65520, 1280, 65535, integer=True)
    offload = r.get("offload", bool, True, "true or false")
    r.unknown_keys()
    return TunConfig(name=name, address=address, address6=address6, mtu=mtu, offload=offload)


def _read_routing(table: dict[str, Any], problems: list[ConfigProblem]) -> RoutingConfig:
    r = _Reader(table, "routing", problems)
    tid = r.number("table", 2026, 1, 2**31 - 1, integer=True)
    if tid in (253, 254, 255):
        problems.append(ConfigProblem("routing.table", f"expected a table id other than the kernel's own (253 default, 254 main, 255 local), got {tid}"))
        tid = 2026
    mark = r.number("fwmark", 0x2026, 1, 2**32 - 1, integer=True)
    prio = r.number("rule_priority", 32000, 2, 32765, integer=True)
    r.unknown_keys()
    return RoutingConfig(table=tid, fwmark=mark, rule_priority=prio)


def _read_daemon(table: dict[str, Any], problems: list[ConfigProblem]) -> DaemonConfig:
    r = _Reader(table, "daemon", problems)
    state_dir = r.get("state_dir", str, "/run/atlantic", "an absolute directory path")
    parts = state_dir.split("/")
    if not state_dir.startswith("/") or ".." in parts or "\0" in state_dir or len(state_dir) > 200 or state_dir == "/":
        problems.append(ConfigProblem("daemon.state_dir", f"expected an absolute directory path (no '..', at most "
                                                          f"200 characters) such as /run/atlantic, got {state_dir[:60]!r}"))
        state_dir = "/run/atlantic"
    level = r.get("log_level", str, "info", "one of " + ", ".join(_LOG_LEVELS))
    if level not in _LOG_LEVELS:
        problems.append(ConfigProblem("daemon.log_level", f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}"))
        level = "info"
    idle = r.number("idle_timeout_s", 300.0, 1, 86400)
    head = r.number("head_timeout_s", 30.0, 1, 3600)
    max_flows = r.number("max_flows", 0, 0, 1_000_000, integer=True)
    max_files = r.number("max_open_files", 65536, 1024, 1_048_576, integer=True)
    metrics = r.get("metrics", str, None, "an address to serve Prometheus metrics on, such as 127.0.0.1:9477")
    if metrics is not None:
        from atlantic.client.metrics import MetricsError, parse_listen

        try:
            parse_listen(metrics)
        except MetricsError as exc:
            problems.append(ConfigProblem("daemon.metrics", str(exc)))
            metrics = None
    r.unknown_keys()
    return DaemonConfig(state_dir=Path(state_dir), log_level=level, idle_timeout_s=float(idle),
                        head_timeout_s=float(head), max_flows=max_flows, max_open_files=max_files,
                        metrics=metrics or None)


def parse_config(text: str, source: str = "<config>") -> tuple[Config, list[ConfigProblem]]:
    """Parse TOML text into a Config and the list of every problem found (pure)."""
    problems: list[ConfigProblem] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Config(source=source), [ConfigProblem("(file)", f"not valid TOML: {exc}")]
    except RecursionError:  # tomllib recurses once per nesting level
        return Config(source=source), [ConfigProblem(
            "(file)", "not usable TOML: arrays or tables nested too deeply; Atlantic's settings nest two levels")]
    from atlantic.client.config_health import read_health
    from atlantic.client.config_tls import read_tls
    from atlantic.client.config_upstream import read_upstreams

    sections = {"upstream", "pool", "capture", "tun", "routing", "daemon", "health", "tls"}
    for key in sorted(set(raw) - sections):
        problems.append(ConfigProblem(key, "unknown section or key (expected one of: " + ", ".join(sorted(sections)) + ")"))
    upstreams = read_upstreams(raw.get("upstream", {}), problems)
    cfg = Config(
        upstream=upstreams[0],
        standbys=upstreams[1:],
        pool=_read_pool(_section(raw, "pool", problems), problems),
        capture=_read_capture(_section(raw, "capture", problems), problems),
        tun=_read_tun(_section(raw, "tun", problems), problems),
        routing=_read_routing(_section(raw, "routing", problems), problems),
        daemon=_read_daemon(_section(raw, "daemon", problems), problems),
        health=read_health(_section(raw, "health", problems), problems),
        tls=read_tls(_section(raw, "tls", problems), problems),
        source=source,
    )
    if not cfg.health.enabled and cfg.standbys:
        problems.append(ConfigProblem("health.enabled", "false needs a single upstream: with several, the monitor "
                                                        "is what moves flows to the next one"))
    return cfg, problems




_MOVED = frozenset({"config_path", "check_config_file", "load_config", "read_password_file",
                    "upstream_url_with_secret"})


def __getattr__(name: str):
    """The file-system half moved to ``config_check``; its names stay importable from here."""
    if name in _MOVED:
        from atlantic.client import config_check

        return getattr(config_check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
