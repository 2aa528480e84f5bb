"""Namespaces, veth links, routing and sysctls of the lab (system edge, `ip` commands).

Only names from `atlantic.lab.topology` (prefix ``atl-``) are ever created or removed;
the host's own interfaces, routes and rules are never touched. The single host-wide
setting changed is ``net.ipv4.tcp_allowed_congestion_control`` (cubic added), which the
caller records and restores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from atlantic.lab.procs import CommandError, run
from atlantic.lab.topology import (
    ALL_ROLES, DELAY_TABLE, HOST_IFNAME, HOSTS, ROUTER_TUN, ROUTER_TUN_ADDR, SUBNET,
    blackhole_table, host_ip, hosts_file, ns_name, render_blackhole, render_heal, resolv_conf,
    router_ifname, router_ip,
)

NETNS_ETC = Path("/etc/netns")
ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


def lab_namespaces() -> list[str]:
    """The lab's namespaces that exist now (never another prefix such as ``atlt-``)."""
    ours = {ns_name(r) for r in ALL_ROLES}
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line and line.split()[0] in ours]


def _ip(ns: str, *args: str) -> None:
    run(["ip", "-n", ns_name(ns), *args])


def _sysctl(ns: str, settings: dict[str, str]) -> None:
    run(["ip", "netns", "exec", ns_name(ns), "sysctl", "-q", "-w",
         *(f"{k}={v}" for k, v in settings.items())])


def ensure_cubic_allowed() -> tuple[str, str]:
    """Add cubic to the host's allowed congestion controls; return (original, now)."""
    original = ALLOWED_CC.read_text().strip()
    if "cubic" in original.split():
        return original, original
    ALLOWED_CC.write_text(original + " cubic\n")
    return original, ALLOWED_CC.read_text().strip()


def restore_allowed_cc(original: str, ours: str) -> None:
    """Put the original allowed list back, unless someone else changed it since."""
    if original and ALLOWED_CC.read_text().strip() == ours and original != ours:
        ALLOWED_CC.write_text(original + "\n")


def create_namespaces(roles: tuple[str, ...] = ALL_ROLES) -> None:
    """Create the lab's namespaces with loopback up and cubic congestion control."""
    for role in roles:
        run(["ip", "netns", "add", ns_name(role)])
    for role in roles:
        _ip(role, "link", "set", "lo", "up")
        _sysctl(role, {"net.ipv4.tcp_congestion_control": "cubic"})
    forget_tcp_metrics()


def forget_tcp_metrics() -> None:
    """Make every new connection start from scratch: no per-destination TCP metrics kept.

    Linux remembers ssthresh, cwnd and reordering per destination and seeds new connections
    with them, so a run at one delay would shape the next run's slow start (after a run at
    delay 0 the lab's hosts held "reordering 300" for each other). Called at creation and
    whenever the delay changes.
    """
    for ns in lab_namespaces():
        _sysctl(ns, {"net.ipv4.tcp_no_metrics_save": "1"})
        run(["ip", "netns", "exec", ns, "ip", "tcp_metrics", "flush", "all"], check=False)


def create_links(hosts: tuple[str, ...] = HOSTS) -> None:
    """Join *hosts* (client, proxies, origin) to the router with veth pairs and default routes."""
    _sysctl("router", {
        "net.ipv4.ip_forward": "1",
        # packets come back out of the TUN with the sender's source: no reverse-path check
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    })
    for role in hosts:
        r_if = router_ifname(role)
        _ip("router", "link", "add", r_if, "type", "veth", "peer", "name", HOST_IFNAME,
            "netns", ns_name(role))
        _ip("router", "addr", "add", f"{router_ip(role)}/24", "dev", r_if)
        _ip("router", "link", "set", r_if, "up")
        _ip(role, "addr", "add", f"{host_ip(role)}/24", "dev", HOST_IFNAME)
        _ip(role, "link", "set", HOST_IFNAME, "up")
        _ip(role, "route", "add", "default", "via", router_ip(role))


def create_delay_routing() -> None:
    """Persistent TUN in the router and policy rules sending forwarded packets through it.

    Packets the delay line writes back arrive with iif dl0, match no rule and are routed
    by the main table; local destinations (the local table, pref 0) are never delayed.
    """
    _ip("router", "tuntap", "add", "dev", ROUTER_TUN, "mode", "tun", "vnet_hdr")
    _ip("router", "addr", "add", ROUTER_TUN_ADDR, "dev", ROUTER_TUN)
    _ip("router", "link", "set", ROUTER_TUN, "up")
    _ip("router", "route", "add", "default", "dev", ROUTER_TUN, "table", str(DELAY_TABLE))
    add_delay_rules()


def add_delay_rules(hosts: tuple[str, ...] = HOSTS) -> None:
    """Send what the router forwards from each of *hosts* through the delay line."""
    for role in hosts:
        _ip("router", "rule", "add", "pref", str(999 + SUBNET[role]), "iif", router_ifname(role),
            "lookup", str(DELAY_TABLE))


def add_host(role: str, rate_mbit: float | None) -> None:
    """Join one more host namespace to a running lab (a lab built before *role* existed)."""
    create_namespaces((role,))
    create_links((role,))
    add_delay_rules((role,))
    if rate_mbit is not None:
        run(["ip", "netns", "exec", ns_name("router"), *tbf_argv(router_ifname(role), rate_mbit)])


def remove_host(role: str) -> None:
    """Undo `add_host` as far as it got (its namespace, and the router's rule for it)."""
    run(["ip", "-n", ns_name("router"), "rule", "del", "pref", str(999 + SUBNET[role])],
        check=False)
    if ns_name(role) in lab_namespaces():
        run(["ip", "netns", "del", ns_name(role)], check=False)


def tun_has_carrier() -> bool:
    """True once a delay line process has attached to the router's TUN."""
    out = run(["ip", "-n", ns_name("router"), "link", "show", ROUTER_TUN], check=False).stdout
    return bool(out) and "NO-CARRIER" not in out


def tbf_argv(dev: str, rate_mbit: float) -> list[str]:
    """tc command shaping *dev* to *rate_mbit* (burst fits a 64 KiB GSO packet)."""
    burst = max(256 * 1024, int(rate_mbit * 1e6 / 8 * 0.004))
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
            "burst", str(burst), "latency", "100ms"]


def set_rate(rate_mbit: float | None) -> None:
    """Shape every router veth to *rate_mbit* (both directions), or remove the shaping."""
    present = lab_namespaces()
    for role in (h for h in HOSTS if ns_name(h) in present):
        dev = router_ifname(role)
        if rate_mbit is None:
            run(["ip", "netns", "exec", ns_name("router"), "tc", "qdisc", "del", "dev", dev,
                 "root"], check=False)
        else:
            run(["ip", "netns", "exec", ns_name("router"), *tbf_argv(dev, rate_mbit)])


def write_etc_netns() -> None:
    """/etc/netns/<ns>/{hosts,resolv.conf}: bind-mounted over /etc by ``ip netns exec``."""
    for role in ALL_ROLES:
        d = NETNS_ETC / ns_name(role)
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(hosts_file(role))
        (d / "resolv.conf").write_text(resolv_conf(role))


def remove_etc_netns() -> None:
    """Remove the lab's /etc/netns dirs (and /etc/netns itself if that leaves it empty)."""
    for role in ALL_ROLES:
        shutil.rmtree(NETNS_ETC / ns_name(role), ignore_errors=True)
    try:
        NETNS_ETC.rmdir()
    except OSError:
        pass


def namespace_pids(ns: str) -> list[int]:
    """PIDs of every process living in lab namespace *ns*."""
    r = run(["ip", "netns", "pids", ns_name(ns)], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def delete_namespaces() -> list[str]:
    """Delete the lab's namespaces (veths and the TUN go with them); return errors."""
    errors = []
    for ns in lab_namespaces():
        try:
            run(["ip", "netns", "del", ns])
        except CommandError as e:
            errors.append(str(e))
    return errors


def blackhole(role: str) -> None:
    """Silently drop every packet the router forwards to or from *role* (safe twice)."""
    _nft(render_blackhole(role))


def refuse_some(role: str, percent: int) -> None:
    """Refuse ``percent`` of new connections to *role* with a reset (replaces a blackhole; safe twice)."""
    _nft(render_blackhole(role, percent))


def heal(role: str) -> None:
    """Undo `blackhole` for *role* (safe if it is not blackholed)."""
    _nft(render_heal(role))


def is_blackholed(role: str) -> bool:
    """True if the router has *role*'s blackhole table."""
    r = run(["ip", "netns", "exec", ns_name("router"), "nft", "list", "tables"], check=False)
    return f"table inet {blackhole_table(role)}" in r.stdout.splitlines()


def _nft(script: str) -> None:
    if shutil.which("nft") is None:
        raise CommandError("`nft` is not installed (apt-get install nftables)")
    run(["ip", "netns", "exec", ns_name("router"), "nft", "-f", "-"], input=script)
