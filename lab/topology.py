"""The lab's shape as data: namespaces, addresses, names, and the exported environment.

Pure: no I/O. Everything that creates or starts something reads its names and
addresses from here, so tests and benchmarks can rely on them.

    client 10.77.1.2 --- 10.77.1.1 \\
    proxy  10.77.2.2 --- 10.77.2.1  \\
    origin 10.77.3.2 --- 10.77.3.1  router (delay line on TUN dl0)
    proxy2 10.77.4.2 --- 10.77.4.1  /
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

NS_PREFIX = "atl-"
# The first four namespaces (tests pin this tuple); ALL_ROLES adds the second proxy.
ROLES = ("client", "router", "proxy", "origin")
ALL_ROLES = (*ROLES, "proxy2")
HOSTS = ("client", "proxy", "origin", "proxy2")  # the namespaces hanging off the router
SUBNET = {"client": 1, "proxy": 2, "origin": 3, "proxy2": 4}
PROXY_ROLES = {1: "proxy", 2: "proxy2"}  # `atlantic lab proxy N ...`

ROUTER_TUN = "dl0"
ROUTER_TUN_ADDR = "10.77.0.1/32"
DELAY_TABLE = 177  # router's policy table: "default dev dl0"
HOST_IFNAME = "eth0"  # inside client/proxy/origin

SQUID_PORT = 3128
H2_PROXY_PORT = 3129
PROXY_NAME = "proxy.test"
PROXY2_NAME = "proxy2.test"
ORIGIN_NAME = "origin.test"
PROXY_USER = "atl"
# Names only the proxy host can resolve (Squid's hosts file): a flow to one of them works
# through Atlantic only if the name travels in CONNECT and resolves at the exit node.
PROXY_ONLY_NAMES = ("www.origin.test", "cdn.origin.test")
DNS_PORT = 53  # the lab's DNS server (lab/dnsserver.py) on the origin, UDP and TCP


def ns_name(role: str) -> str:
    """Full namespace name for a role (``client`` -> ``atl-client``); full names pass."""
    if role.startswith(NS_PREFIX):
        return role
    if role not in ALL_ROLES:
        raise ValueError(f"unknown lab namespace {role!r}; pick one of {', '.join(ALL_ROLES)}")
    return NS_PREFIX + role


def host_ip(role: str) -> str:
    """Address of a host namespace (client, proxy, origin, proxy2)."""
    return f"10.77.{SUBNET[role]}.2"


def router_ip(role: str) -> str:
    """The router's address on the link towards *role* (that host's gateway)."""
    return f"10.77.{SUBNET[role]}.1"


def router_ifname(role: str) -> str:
    """Name of the router's veth towards *role*."""
    return f"to-{role}"


def hosts_file(role: str | None = None) -> str:
    """The /etc/hosts a lab namespace sees (bind-mounted by ``ip netns exec``).

    The proxies' (``role="proxy"`` or ``"proxy2"``) also name `PROXY_ONLY_NAMES`; every
    other namespace's does not, so the client can never resolve them itself.
    """
    is_proxy = role in PROXY_ROLES.values()
    extra = "".join(f"{host_ip('origin')}\t{n}\n" for n in PROXY_ONLY_NAMES) if is_proxy else ""
    return (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{host_ip('client')}\tclient.test\n"
        f"{host_ip('proxy')}\t{PROXY_NAME}\n"
        f"{host_ip('origin')}\t{ORIGIN_NAME}\n"
        f"{host_ip('proxy2')}\t{PROXY2_NAME}\n"
        + extra
    )


def squid_dir_name(role: str) -> str:
    """The state subdirectory of a proxy's Squid: ``squid`` (proxy 1), ``squid2`` (proxy 2).

    Also the Squid's key in the state file's PIDs.
    """
    return "squid" if role == "proxy" else "squid2"


def blackhole_table(role: str) -> str:
    """Name of the router's nftables table that blackholes *role*'s address."""
    return f"atl_blackhole_{role}"


def render_blackhole(role: str, refuse_percent: int | None = None) -> str:
    """``nft -f`` script (atomic, safe twice) dropping every forwarded packet to or from *role*.

    Silent drops in the router's forward hook, before the delay line: to the client the
    proxy vanishes (connects time out, open connections stall), as when a residential
    exit goes away. With ``refuse_percent``, nothing is dropped; instead that share of new
    connections to *role* is refused with a reset (a flaky exit that turns away some
    connections and serves the rest).
    """
    table, ip = blackhole_table(role), host_ip(role)
    if refuse_percent is None:
        rules = f"\t\tip daddr {ip} drop\n\t\tip saddr {ip} drop\n"
    else:
        if not 0 < refuse_percent < 100:
            raise ValueError(f"refuse_percent must be within 1..99, got {refuse_percent}")
        rules = (f"\t\tip daddr {ip} tcp flags & (syn | ack) == syn "
                 f"numgen random mod 100 < {refuse_percent} reject with tcp reset\n")
    return (f"table inet {table}\n"
            f"delete table inet {table}\n"
            f"table inet {table} {{\n"
            "\tchain forward {\n"
            "\t\ttype filter hook forward priority filter; policy accept;\n"
            f"{rules}"
            "\t}\n"
            "}\n")


def render_heal(role: str) -> str:
    """``nft -f`` script removing *role*'s blackhole table (safe if there is none)."""
    table = blackhole_table(role)
    return f"table inet {table}\ndelete table inet {table}\n"


def resolv_conf(role: str) -> str:
    """A resolv.conf that points inside the lab, so nothing asks the host's resolver."""
    server = router_ip(role) if role in SUBNET else router_ip("client")
    return ("# atlantic lab: no resolver listens here on purpose\n"
            f"nameserver {server}\noptions timeout:1 attempts:1\n")


@dataclass(frozen=True, slots=True)
class LabEnv:
    """Everything a test needs to know about a running lab."""

    delay_ms: float
    rate_mbit: float | None
    proxy_user: str
    proxy_password: str
    ca_file: str
    squid_access_log: str
    sha256_2mb: str
    sha256_100mb: str
    state_dir: str

    client_ns: str = ns_name("client")
    router_ns: str = ns_name("router")
    proxy_ns: str = ns_name("proxy")
    origin_ns: str = ns_name("origin")
    client_ip: str = host_ip("client")
    proxy_ip: str = host_ip("proxy")
    origin_ip: str = host_ip("origin")
    proxy_host: str = PROXY_NAME
    origin_host: str = ORIGIN_NAME
    squid_port: int = SQUID_PORT
    h2_proxy_port: int = H2_PROXY_PORT
    dns_resolver: str = f"{host_ip('origin')}:{DNS_PORT}"
    proxy_only_host: str = PROXY_ONLY_NAMES[0]
    proxy2_ns: str = ns_name("proxy2")
    proxy2_ip: str = host_ip("proxy2")
    proxy2_host: str = PROXY2_NAME

    @property
    def proxy_url(self) -> str:
        """Squid, HTTP/1.1, with credentials."""
        return f"http://{self.proxy_user}:{self.proxy_password}@{self.proxy_ip}:{self.squid_port}"

    @property
    def h2_proxy_url(self) -> str:
        """nghttpx (TLS, ALPN h2) in front of Squid, with credentials."""
        return (f"https://{self.proxy_user}:{self.proxy_password}"
                f"@{self.proxy_host}:{self.h2_proxy_port}")

    @property
    def proxy2_url(self) -> str:
        """The second proxy's Squid (same user and password), HTTP/1.1, with credentials."""
        return f"http://{self.proxy_user}:{self.proxy_password}@{self.proxy2_ip}:{self.squid_port}"

    @property
    def squid2_access_log(self) -> str:
        """The second Squid's access log (same format as the first's)."""
        return f"{self.state_dir}/{squid_dir_name('proxy2')}/access.log"

    def as_env(self) -> dict[str, str]:
        """The LAB_* environment variables describing this lab."""
        return {
            "LAB_CLIENT_NS": self.client_ns,
            "LAB_ROUTER_NS": self.router_ns,
            "LAB_PROXY_NS": self.proxy_ns,
            "LAB_ORIGIN_NS": self.origin_ns,
            "LAB_CLIENT_IP": self.client_ip,
            "LAB_PROXY_IP": self.proxy_ip,
            "LAB_ORIGIN_IP": self.origin_ip,
            "LAB_PROXY_HOST": self.proxy_host,
            "LAB_ORIGIN_HOST": self.origin_host,
            "LAB_PROXY_URL": self.proxy_url,
            "LAB_H2_PROXY_URL": self.h2_proxy_url,
            "LAB_PROXY_USER": self.proxy_user,
            "LAB_PROXY_PASSWORD": self.proxy_password,
            "LAB_ORIGIN_HTTP": f"http://{self.origin_host}",
            "LAB_ORIGIN_HTTPS": f"https://{self.origin_host}",
            "LAB_CA_FILE": self.ca_file,
            "LAB_DELAY_MS": f"{self.delay_ms:g}",
            "LAB_RATE_MBIT": "" if self.rate_mbit is None else f"{self.rate_mbit:g}",
            "LAB_SQUID_ACCESS_LOG": self.squid_access_log,
            "LAB_SHA256_2MB": self.sha256_2mb,
            "LAB_SHA256_100MB": self.sha256_100mb,
            "LAB_STATE_DIR": self.state_dir,
            "LAB_DNS_RESOLVER": self.dns_resolver,
            "LAB_PROXY_ONLY_HOST": self.proxy_only_host,
            "LAB_PROXY2_NS": self.proxy2_ns,
            "LAB_PROXY2_IP": self.proxy2_ip,
            "LAB_PROXY2_HOST": self.proxy2_host,
            "LAB_PROXY2_URL": self.proxy2_url,
            "LAB_SQUID2_ACCESS_LOG": self.squid2_access_log,
        }

    def to_dict(self) -> dict:
        """The fields that are not constants, for the state file."""
        return {
            "delay_ms": self.delay_ms, "rate_mbit": self.rate_mbit,
            "proxy_user": self.proxy_user, "proxy_password": self.proxy_password,
            "ca_file": self.ca_file, "squid_access_log": self.squid_access_log,
            "sha256_2mb": self.sha256_2mb, "sha256_100mb": self.sha256_100mb,
            "state_dir": self.state_dir,
        }


def render_exports(env: dict[str, str]) -> str:
    """Shell ``export`` lines for *env*, values quoted for sh."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
