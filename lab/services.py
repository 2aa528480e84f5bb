"""The lab's processes: delay line (router), Squid and nghttpx (proxy), a second Squid
(proxy2), nginx and DNS (origin).

Each ``start_*`` renders its config into the lab state dir, starts the process in its
namespace in the foreground-mode of the program (so the PID we record is the service
itself), waits for its port with a deadline, and returns the PID. A service that does
not come up raises `ServiceError` naming the log to read.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from string import Template

from atlantic.lab import netns
from atlantic.lab.procs import is_alive, ns_exec_argv, run, spawn, terminate, wait_tcp
from atlantic.lab.topology import (
    DNS_PORT, H2_PROXY_PORT, PROXY2_NAME, PROXY_NAME, ROUTER_TUN, SQUID_PORT, host_ip, hosts_file,
    router_ip, squid_dir_name,
)

START_TIMEOUT_S = 15.0
# Squid's -n: keeps its shm names apart from other Squids; must be alphanumeric
SQUID_SERVICE_NAME = "atllab"
SQUID_SERVICE_NAMES = {"proxy": SQUID_SERVICE_NAME, "proxy2": "atllab2"}


class ServiceError(RuntimeError):
    """A lab service did not start; the message names the service and its log."""


def render_template(name: str, **values: object) -> str:
    """Fill ``lab/templates/<name>`` with *values* (``${key}`` placeholders)."""
    text = resources.files("atlantic.lab").joinpath("templates", name).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def _check_started(name: str, pid: int, ok: bool, log: Path) -> int:
    if ok and is_alive(pid):
        return pid
    alive = is_alive(pid)
    terminate([pid])
    why = "did not open its port in time" if alive else "exited at start"
    raise ServiceError(f"{name} {why}; see {log}")


def start_delayline(state: Path, delay_ms: float) -> int:
    """Start the delay line on the router's TUN; return its PID once it is attached."""
    log = state / "delayline.log"
    pid = spawn("router", [sys.executable, "-m", "atlantic.lab.delayline", "--dev", ROUTER_TUN,
                           "--delay-ms", f"{delay_ms:g}"], log)
    deadline = time.monotonic() + START_TIMEOUT_S
    ok = False
    while time.monotonic() < deadline and is_alive(pid):
        if netns.tun_has_carrier():
            ok = True
            break
        time.sleep(0.05)
    return _check_started("delay line", pid, ok, log)


def start_squid(state: Path, user: str, password: str, role: str = "proxy") -> int:
    """Start Squid (basic auth, no cache) on *role*'s address (proxy or proxy2); return its PID.

    Also used to start it again after `stop_squid`: the access log is appended to.
    """
    d = state / squid_dir_name(role)
    d.mkdir(mode=0o750, exist_ok=True)
    run(["htpasswd", "-b", "-c", "-m", str(d / "passwd"), user, password])
    conf = d / "squid.conf"
    (d / "hosts").write_text(hosts_file(role))
    text = render_template("squid.conf", dir=d, proxy_ip=host_ip(role), squid_port=SQUID_PORT,
                           dns_server=router_ip(role), hosts_file=d / "hosts",
                           dns_port=DNS_PORT, dns_ip=host_ip("origin"))
    if role != "proxy":  # a later visible_hostname wins (the template is shared with tests)
        text += f"visible_hostname {PROXY2_NAME}\n"
    conf.write_text(text)
    # Squid drops to `proxy`: it must write its logs and pid here and read passwd
    shutil.chown(d, "root", "proxy")
    for name in ("access.log", "cache.log"):
        (d / name).touch()
        shutil.chown(d / name, "proxy", "proxy")
        os.chmod(d / name, 0o644)
    os.chmod(d, 0o770)
    shutil.chown(d / "passwd", "root", "proxy")
    os.chmod(d / "hosts", 0o644)
    os.chmod(d / "passwd", 0o640)
    log = d / "squid.out"
    pid = spawn(role, ["squid", "-N", "-n", SQUID_SERVICE_NAMES[role], "-f", str(conf)], log)
    ok = wait_tcp(role, host_ip(role), SQUID_PORT, START_TIMEOUT_S, pid)
    return _check_started(f"squid ({role})", pid, ok, d / "cache.log")


def stop_squid(pid: int) -> None:
    """Stop a Squid at once (SIGINT: SIGTERM would wait shutdown_lifetime for clients)."""
    terminate([pid], sig=signal.SIGINT)


def start_nghttpx(state: Path, cert: Path, key: Path) -> int:
    """Start nghttpx as an HTTP/2 (TLS, ALPN h2) forward proxy in front of Squid."""
    d = state / "nghttpx"
    d.mkdir(exist_ok=True)
    log = d / "error.log"
    proxy = host_ip("proxy")
    argv = [
        "nghttpx", "--conf=/dev/null", "--http2-proxy", "--single-process", "--no-ocsp",
        f"--frontend={proxy},{H2_PROXY_PORT}", f"--backend={proxy},{SQUID_PORT}",
        f"--pid-file={d / 'nghttpx.pid'}", f"--errorlog-file={log}",
        f"--accesslog-file={d / 'access.log'}",
        "--frontend-http2-window-size=16M", "--frontend-http2-connection-window-size=16M",
        "--backend-keep-alive-timeout=60s", "--no-via",
        # The default 8 backend connections per host is one per CONNECT tunnel: too few
        # for a machine's worth of HTTPS flows sharing one HTTP/2 connection.
        "--backend-connections-per-host=256",
        str(key), str(cert),
    ]
    pid = spawn("proxy", argv, d / "nghttpx.out")
    ok = wait_tcp("proxy", proxy, H2_PROXY_PORT, START_TIMEOUT_S, pid)
    return _check_started(f"nghttpx ({PROXY_NAME}:{H2_PROXY_PORT})", pid, ok, log)


def start_nginx(state: Path, www: Path, cert: Path, key: Path) -> int:
    """Start nginx on the origin (HTTP :80, HTTPS+h2 :443) serving *www*; return its PID."""
    d = state / "nginx"
    conf = _write_nginx_conf(d, www, cert, key)
    log = d / "error.log"
    pid = spawn("origin", ["nginx", "-c", str(conf), "-e", str(log)], d / "nginx.out")
    ok = (wait_tcp("origin", host_ip("origin"), 80, START_TIMEOUT_S, pid)
          and wait_tcp("origin", host_ip("origin"), 443, START_TIMEOUT_S, pid))
    return _check_started("nginx", pid, ok, log)


def reload_nginx(state: Path, www: Path, cert: Path, key: Path, pid: int) -> None:
    """Re-render nginx.conf and have the running master (*pid*) reload it gracefully."""
    d = state / "nginx"
    conf = _write_nginx_conf(d, www, cert, key)
    run(ns_exec_argv("origin", ["nginx", "-t", "-q", "-c", str(conf), "-e", str(d / "error.log")]))
    os.kill(pid, signal.SIGHUP)


def _write_nginx_conf(d: Path, www: Path, cert: Path, key: Path) -> Path:
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(render_template("nginx.conf", dir=d, www=www, cert=cert, key=key,
                                    origin_ip=host_ip("origin")))
    return conf


def start_dns(state: Path) -> int:
    """Start the lab's DNS server (UDP and TCP :53) on the origin; return its PID."""
    log = state / "dns.log"
    pid = spawn("origin", [sys.executable, "-m", "atlantic.lab.dnsserver",
                           "--listen", host_ip("origin"), "--port", str(DNS_PORT)], log)
    ok = wait_tcp("origin", host_ip("origin"), DNS_PORT, START_TIMEOUT_S, pid)
    return _check_started("lab DNS server", pid, ok, log)
