"""The Atlantic daemon: wires the TUN system stack, DNS, routing, the kill switch, the
forwarder, the outbound side (pools, health monitor, leak detector: ``outbound.py``), the
network watchers (``netguard.py``), systemd's notify protocol and the control socket.

Start-up order matters for failing safe: the upstream's address is resolved while the
machine's own DNS still works; the TUN and the listeners exist before routing points at
them; the state file records what routing and the kill switch will change *before* they
change it, so ``atlantic down`` can undo a crash at any point. Shutdown is an event
followed by a bounded drain, then everything is restored in a ``finally``. A crash
leaves routing and the kill switch in place: traffic fails instead of leaking. READY=1
goes to systemd only once routing and the kill switch are in place; SIGHUP re-reads the
config.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import replace

from atlantic import __version__
from atlantic.client import outbound, repin, seal
from atlantic.client.config import Config, ConfigError
from atlantic.client.control import PUBLIC_COMMANDS, ControlServer
from atlantic.client.allocator import Allocator
from atlantic.client.memreport import MemoryReport, start_tracing_from_env
from atlantic.client.netguard import NetGuard
from atlantic.client.sdnotify import Notifier, watchdog_task
from atlantic.client.state import StatePaths, load_fakeip, remove_state, write_state
from atlantic.dns import fakeip
from atlantic.dns.intercept import DnsInterceptor
from atlantic.forwarder.dispatch import Dispatcher, default_max_flows, raise_nofile_limit
from atlantic.forwarder.intercept import InterceptPolicy
from atlantic.interceptor.policy import default_policy
from atlantic.pool.upstream import parse_upstream
from atlantic.system import killswitch, redirect, routing
from atlantic.system.marked_dns import read_resolvers
from atlantic.system.netwatch import NetWatch
from atlantic.system.sleepwatch import SleepWatch

log = logging.getLogger("atlantic")

DRAIN_TIMEOUT_S = 3.0
LISTEN_BACKLOG = 4096
FAKEIP_SAVE_INTERVAL_S = 30.0
IP_FREEBIND = 15  # <linux/in.h>; not exported by the socket module
IPV6_FREEBIND = 78  # <linux/in6.h>
STATUS_TRIES = 5
STATUS_LOOP_TIMEOUT_S = 2.0
STATUS_LINE_S = 10.0  # how often systemd's STATUS= line is brought up to date
# The control socket's threads wait for the GIL while the event loop runs; CPython hands it
# over only every switch interval (5 ms by default), several times per `status` reply.
GIL_SWITCH_INTERVAL_S = 0.0005
RESTART_EXIT = 75  # EX_TEMPFAIL: "stopped for a restart"; a failure to systemd, so it restarts


def run_daemon(cfg: Config, upstream_urls: list[str]) -> None:
    """Run until stopped; start-up failures are logged as one line and exit 1."""
    logging.basicConfig(
        level=getattr(logging, cfg.daemon.log_level.upper()),
        format="%(asctime)s atlantic[%(process)d] %(levelname)s %(message)s",
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    asyncio.run(Daemon(cfg, upstream_urls).run())


def _listener(family: int, address: str, port: int, *, freebind: bool = True) -> socket.socket:
    """A listening socket on ``address``: the TUN's, bound before it exists (FREEBIND), or
    loopback (``freebind=False``: a missing ``::1`` must fail the bind, not be assumed)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if freebind:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        elif freebind:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Daemon:
    """One running instance in the current network namespace."""

    def __init__(self, cfg: Config, upstream_urls: list[str]):
        self.cfg = cfg
        self.upstream_urls = list(upstream_urls)  # with their passwords: never logged or shown
        self.upstreams = [parse_upstream(url) for url in self.upstream_urls]
        self.upstream = self.upstreams[0]
        self.paths = StatePaths.for_namespace(cfg.daemon.state_dir)
        self.started = time.monotonic()
        start_tracing_from_env()  # a diagnosis only (lab/soak.py --trace-frames)
        self.memory = MemoryReport()
        self.allocator = Allocator()
        self.allocator.tune()  # before the helper threads start: see client/allocator.py
        self.stopping = asyncio.Event()
        self.stop_requested = False  # what `status` reads: the control thread must not touch the Event
        self.loop: asyncio.AbstractEventLoop | None = None
        # The NAT's "virtual client" is the other host address of the TUN's own prefix.
        iface = ipaddress.IPv4Interface(cfg.tun.address)
        self.inet_addr = str(iface.ip)
        self.virtual_client = str(next(h for h in iface.network.hosts() if h != iface.ip))
        self.prefixlen = iface.network.prefixlen
        iface6 = ipaddress.IPv6Interface(cfg.tun.address6)
        self.inet6_addr = str(iface6.ip)
        self.virtual_client6 = str(next(h for h in iface6.network.hosts() if h != iface6.ip))
        self.prefixlen6 = iface6.network.prefixlen
        self.ipv6 = "captured" if cfg.capture.ipv6 == "capture" else "blocked"
        self.stack = None
        self.outbound: outbound.Outbound | None = None
        self.metrics = None
        self.dns: DnsInterceptor | None = None
        self.fake_pool: fakeip.FakeIpPool | None = None
        self.dispatcher: Dispatcher | None = None
        self.killswitch_on = False
        self.ready = False  # routing applied: `up` returns only then
        self.notifier = Notifier.from_environment()  # systemd's READY/STATUS/WATCHDOG (no-op outside it)
        self.guard: NetGuard | None = None
        self.stale_pins: list[str] = []  # proxies whose address came from the pins file at start
        self.resolvers: tuple[str, ...] = ()  # the network's DNS servers, for the marked re-resolve
        self.keep_sealed = False  # SIGUSR2: stop for a restart, the machine left closed
        self.redirect: redirect.RedirectConfig | None = None  # the kernel's TCP redirect, once applied
        self.background: list[asyncio.Task] = []

    def _killswitch_config(self, pinned: dict[str, str], resolvers: tuple[str, ...] = ()) -> killswitch.KillSwitchConfig:
        return seal.killswitch_config(self.cfg, self.upstreams, pinned, resolvers)  # as `atlantic killswitch apply`

    def _load_ca(self):
        """The local CA for ``[tls] intercept`` (None when nothing is listed); one-line
        RuntimeError when it is missing, unreadable or does not cover the list."""
        intercept = self.cfg.tls.intercept
        if not intercept:
            return None
        from datetime import datetime, timezone

        from atlantic.client.ca_paths import ca_dir
        from atlantic.forwarder.localca import LocalCA, LocalCAError, is_permitted, normalize_domains, renewal_reason

        try:
            ca = LocalCA.load(ca_dir(self.cfg))
        except LocalCAError as exc:
            raise RuntimeError(f"[tls] intercept lists {len(intercept)} domains but {exc}") from None
        missing = [d for d in normalize_domains(intercept) if not is_permitted(d, ca.domains)]
        if missing:
            raise RuntimeError(f"the local CA covers {', '.join(ca.domains)}, not {', '.join(missing)} of "
                               "[tls] intercept: run `sudo atlantic ca init` to make it anew for the list "
                               "(then `sudo atlantic ca install`)")
        if (why := renewal_reason(ca.cert, tuple(intercept), datetime.now(timezone.utc))) is not None:
            log.warning("local CA: %s: run `sudo atlantic ca init` soon", why)
        log.info("TLS termination for %s (local CA %s)", ", ".join(intercept), ", ".join(ca.domains))
        return ca

    def _make_dns(self) -> DnsInterceptor:
        """Fake-IP DNS (through a proxy) or forwarding over marked connections (direct)."""
        self.fake_pool = load_fakeip(self.paths.fakeip_file, time.monotonic(),
                                     v6=None if self.ipv6 == "blocked" else fakeip.DEFAULT_V6)
        return DnsInterceptor(
            self.fake_pool, open_tunnel=lambda host, port: self.outbound.pool.open_tunnel(host, port),
            send=lambda packet: self.stack.send(packet), answer_aaaa=self.ipv6 == "captured",
            resolver=self.cfg.capture.dns_resolver,
            forward_addresses=self.upstream.is_direct, loop=asyncio.get_running_loop(),
        )

    async def run(self) -> None:
        """Bring capture up, serve until asked to stop, then put everything back."""
        from atlantic.interceptor.stack import SystemStack

        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload)
        self.loop.add_signal_handler(signal.SIGUSR2, self._stop_for_restart)
        cfg = self.cfg
        plan = routing.plan_routing(cfg.tun.name, cfg.routing.table, cfg.routing.fwmark, cfg.routing.rule_priority,
                                    ipv6=self.ipv6, capture_dns=True, lan=cfg.capture.lan)
        record = routing.prepare(plan)
        state = {
            "pid": os.getpid(), "version": __version__, "upstream": self.upstream.redacted(),
            "upstreams": [u.redacted() for u in self.upstreams],
            "tun": cfg.tun.name, "routing": record.to_json(), "killswitch": cfg.capture.kill_switch,
            "tcp_redirect": cfg.capture.tcp == "redirect",
            "started_at": time.time(),
        }
        listeners: list[socket.socket] = []
        servers = []
        control = None
        saver = None
        try:
            ca = self._load_ca()  # before anything changes: a missing CA is one line, nothing to undo
            soft, _hard = raise_nofile_limit(cfg.daemon.max_open_files)
            reserve = cfg.pool.max_connections * len(self.upstreams) + 64
            max_flows = cfg.daemon.max_flows or default_max_flows(soft, reserve=reserve)
            pinned, self.stale_pins = await asyncio.to_thread(seal.resolve_or_remembered, self.upstreams,
                                                              seal.pins_file(cfg))
            await asyncio.to_thread(seal.save_pins, seal.pins_file(cfg), pinned, time.time())
            self.resolvers = await asyncio.to_thread(read_resolvers)  # marked DNS may reach them (repin)
            ks_config = self._killswitch_config(pinned, self.resolvers) if cfg.capture.kill_switch else None
            write_state(self.paths, state)
            listeners.append(_listener(socket.AF_INET, self.inet_addr, 0))
            listen_port = listeners[0].getsockname()[1]
            if self.ipv6 == "captured":
                listeners.append(_listener(socket.AF_INET6, self.inet6_addr, listen_port))
            self.dns = self._make_dns()
            self.stack = SystemStack(
                cfg.tun.name, self.inet_addr, self.virtual_client, listen_port, cfg.tun.mtu, cfg.tun.offload,
                prefixlen=self.prefixlen, policy=default_policy(udp=cfg.capture.udp, dns=self.dns.handle_udp),
                inet6_addr=self.inet6_addr if self.ipv6 == "captured" else None,
                virtual_client6_addr=self.virtual_client6 if self.ipv6 == "captured" else None,
                prefixlen6=self.prefixlen6,
            )
            self.stack.start()
            self.outbound = outbound.build(cfg, self.upstream_urls, self.upstreams, pinned)
            self.dispatcher = Dispatcher(
                self.upstream, self.stack.lookup, self.outbound.pool, idle_timeout=cfg.daemon.idle_timeout_s,
                dns=self.dns, carried_ports=frozenset(cfg.capture.ports),
                reject_other_ports=cfg.capture.other_ports == "reject", max_flows=max_flows,
                head_timeout=cfg.daemon.head_timeout_s, ca=ca,
                intercept=InterceptPolicy(cfg.tls.intercept) if ca is not None else None,
                origin_ca_file=str(cfg.tls.origin_ca_file) if cfg.tls.origin_ca_file else None,
            )
            for listener in listeners:
                servers.append(await self.dispatcher.serve(listener))
            redirect_config = None
            if cfg.capture.tcp == "redirect":
                redirect_config, loopback = self._redirect_listeners()
                listeners += loopback
                for listener in loopback:
                    servers.append(await self.dispatcher.serve(listener, redirected=True))
            control = self.control_server()
            control.start()
            # pyroute2's synchronous API and nft run outside our event loop. The redirect
            # goes in first: it matches only what routes to the TUN, nothing until routing does.
            if redirect_config is not None:
                await asyncio.to_thread(redirect.apply, redirect_config)
                self.redirect = redirect_config
            await asyncio.to_thread(routing.apply, plan)
            if ks_config is not None:
                await asyncio.to_thread(killswitch.apply, ks_config)
                self.killswitch_on = True
            await self.outbound.start()  # the leak probe and the first health probes run once capture is on
            saver = asyncio.create_task(self._save_fakeip_forever())
            self._start_background(plan, ks_config, pinned)
            if cfg.daemon.metrics:
                from atlantic.client.metrics import serve

                self.metrics = await asyncio.to_thread(serve, cfg.daemon.metrics, self.status_from_thread)
            self.ready = True
            log.info("up: every flow of this namespace goes via %s to %s (IPv6 %s, kill switch %s, MTU %d)",
                     cfg.tun.name, ", then ".join(u.redacted() for u in self.upstreams), self.ipv6,
                     "on" if self.killswitch_on else "off", cfg.tun.mtu)
            log.info("limits: %d flows at once, %d open files, %g s for a request head%s", max_flows, soft,
                     cfg.daemon.head_timeout_s, f"; metrics on http://{cfg.daemon.metrics}/metrics"
                     if cfg.daemon.metrics else "")
            self.notifier.ready(self.status_line())
            await self.stopping.wait()
            self.notifier.stopping(f"draining {self.dispatcher.flows_open} open flows")
            log.info("stopping: draining %d open flows", self.dispatcher.flows_open)
        except Exception as exc:  # start-up failure: one line, then put everything back
            log.error("cannot bring Atlantic up: %s", exc)
            raise SystemExit(1) from None
        finally:
            await self._shutdown(servers, control, listeners, saver, record)
        if self.keep_sealed:
            raise SystemExit(RESTART_EXIT)

    def _redirect_listeners(self) -> tuple[redirect.RedirectConfig, list[socket.socket]]:
        """The loopback listeners the kernel redirects TCP to, and the redirect that names
        them. IPv6 only when captured and ``::1`` exists (else its TCP stays on the TUN's
        packet NAT, with one line)."""
        loopback = [_listener(socket.AF_INET, "127.0.0.1", 0, freebind=False)]
        port = loopback[0].getsockname()[1]
        if self.ipv6 == "captured":
            try:
                loopback.append(_listener(socket.AF_INET6, "::1", port, freebind=False))
            except OSError as exc:
                log.info("IPv6 TCP goes through the TUN's packet NAT: no loopback listener on [::1]:%d (%s)",
                         port, exc.strerror or exc)
        config = redirect.RedirectConfig(tun=self.cfg.tun.name, fwmark=self.cfg.routing.fwmark, port=port,
                                         ipv4=True, ipv6=len(loopback) == 2)
        return config, loopback

    async def _shutdown(self, servers, control: ControlServer | None, listeners, saver,
                        record: routing.RoutingPlan) -> None:
        for server in servers:
            server.close()
        if self.cfg.capture.tcp == "redirect":  # applied or not: removing an absent table is a no-op
            try:  # new flows follow routing to the TUN from here (and fail there once it is gone)
                await asyncio.to_thread(redirect.remove)
            except redirect.RedirectError as exc:
                log.error("restore: %s", exc)
            self.redirect = None
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if control is not None:
            await asyncio.to_thread(control.close)  # joins its threads; one may be waiting for this loop
        if saver is not None:
            saver.cancel()
        if self.dispatcher is not None:
            await self.dispatcher.aclose(DRAIN_TIMEOUT_S)
        if self.dns is not None:
            await self.dns.aclose()
        if self.outbound is not None:
            await self.outbound.aclose()
        for listener in listeners:
            listener.close()
        if self.keep_sealed:  # a restart follows: leave the machine closed, as a crash would
            if self.stack is not None:
                self.stack.stop()
            self._save_fakeip()
            log.info("stopped for a restart: routing and the kill switch stay in place until the next start")
            return
        if self.cfg.capture.lockdown:  # the table stays: with the TUN gone nothing else gets out
            log.info("lockdown: the kill switch stays after this stop; `atlantic killswitch remove` opens the machine")
        elif self.cfg.capture.kill_switch:
            try:
                await asyncio.to_thread(killswitch.remove)
            except killswitch.KillSwitchError as exc:
                log.error("restore: %s", exc)
        for line in await asyncio.to_thread(routing.restore, record):
            log.error("restore: %s", line)
        if self.stack is not None:
            self.stack.stop()
        await asyncio.to_thread(routing.delete_link, self.cfg.tun.name)
        self._save_fakeip()
        remove_state(self.paths)
        log.info("down: routing restored")

    def _start_background(self, plan: routing.RoutingPlan, ks_config: killswitch.KillSwitchConfig | None,
                          pinned: dict[str, str]) -> None:
        """The watchers off every flow's path: network changes (and what others remove of
        our routing and kill switch), systemd's watchdog and status line."""
        self.guard = NetGuard(plan=plan, killswitch_config=ks_config, redirect_config=self.redirect,
                              drain=self.outbound.drain,
                              recheck_leaks=self.outbound.leaks.recheck, lan=self.cfg.capture.lan,
                              tun=self.cfg.tun.name)
        self.guard.repin = repin.build(self.cfg, self.upstreams, pinned, self.resolvers, self.outbound, self.guard)
        if self.stale_pins:
            self.guard.look_up_again()  # an address from the pins file: check it over the marked path
        watch = NetWatch(self.guard.on_change, tun=self.cfg.tun.name, table=self.cfg.routing.table)
        sleep = SleepWatch(watch.resumed, self.outbound.drain)  # logind, where there is a system bus
        tasks = [("network monitor", watch.run), ("routing guard", self.guard.run),
                 ("suspend watch", sleep.run), ("status line", self._status_line_forever),
                 ("memory trim", self.allocator.trim_forever)]
        if (interval := self.notifier.watchdog_interval()) is not None:
            tasks.append(("watchdog", lambda: watchdog_task(self.notifier, interval)))
        self.background += [asyncio.create_task(outbound.supervised(name, run)) for name, run in tasks]

    def status_line(self) -> str:
        """One line for `systemctl status`: where new flows go, and how many are open."""
        health = self.outbound.status()["health"] if self.outbound is not None else None
        if health is None:
            where = f"via {self.upstream.redacted()}"
        elif health["all_down"]:
            where = "every upstream down: flows refused"
        else:
            down = sum(1 for u in health["upstreams"] if u["state"] == "down")
            where = f"via {health['active']}" + (f" ({down} of {len(health['upstreams'])} down)" if down else "")
        flows = self.dispatcher.flows_open if self.dispatcher is not None else 0
        return f"up: {where}; {flows} flows open"

    async def _status_line_forever(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_LINE_S)
            if (line := self.status_line()) != last:
                self.notifier.status(line)
                last = line

    def _reload(self) -> None:
        """SIGHUP (`systemctl reload atlantic`): re-read the config. A broken file is refused
        in one line and the running settings stay; the log level and [health] apply at once
        (no flow notices); other changes wait for a restart, and the log says which."""
        from atlantic.client.config_check import load_config

        self.notifier.reloading()
        try:
            new = load_config(None if self.cfg.source == "defaults" else self.cfg.source, secrets=False)
        except ConfigError as exc:
            log.error("reload refused, the running settings stay: %s", exc)
            self.notifier.ready(self.status_line())
            return
        logging.getLogger().setLevel(getattr(logging, new.daemon.log_level.upper()))
        applied = ["daemon.log_level"]
        if self.outbound is not None and self.outbound.monitor is not None and new.health != self.cfg.health:
            self.outbound.apply_health(new)
            applied.append("[health]")
        later = [name for name in ("pool", "capture", "tun", "routing", "tls") if getattr(new, name) != getattr(self.cfg, name)]
        if [u.url for u in new.upstreams] != [u.url for u in self.cfg.upstreams] and self.cfg.source != "defaults":
            later.append("upstream")
        self.cfg = replace(self.cfg, health=new.health, daemon=replace(self.cfg.daemon, log_level=new.daemon.log_level))
        log.info("reload: applied %s%s", ", ".join(applied),
                 f"; {', '.join(later)} changed and take effect at the next restart" if later else "")
        self.notifier.ready(self.status_line())

    def _save_fakeip(self) -> None:
        if self.fake_pool is not None:
            try:
                fakeip.save(self.fake_pool, self.paths.dir / "fakeip.json", time.monotonic())
            except OSError as exc:
                log.warning("cannot save the fake-IP mappings: %s", exc)

    async def _save_fakeip_forever(self) -> None:
        """Keep the fake-IP mappings on disk so a restart keeps open flows' names.

        Only when names were added since the last save. The rows are copied on the loop
        in pieces (the pool is not thread-safe; a full map is 65,000 rows), then written
        from a thread a row at a time, so the loop never waits long for either.
        """
        saved = -1
        while True:
            await asyncio.sleep(FAKEIP_SAVE_INTERVAL_S)
            pool = self.fake_pool
            if pool is None or pool.changes == saved:
                continue
            changes = pool.changes
            steps = pool.snapshot_steps(time.monotonic())
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    snap = done.value
                    break
                await asyncio.sleep(0)
            try:
                await asyncio.to_thread(fakeip.write_snapshot, snap, self.paths.dir / "fakeip.json")
                saved = changes
            except OSError as exc:
                log.warning("cannot save the fake-IP mappings: %s", exc)

    def control_server(self) -> ControlServer:
        """The control socket; its handlers run on its threads, never on the loop."""
        return ControlServer(self.paths.control_socket, {
            "status": lambda _req: self.status_from_thread(),
            "stop": lambda _req: self._stop(),
            "memory": lambda req: self.memory.report(sites=bool(req.get("sites", True))),  # root only (not in PUBLIC_COMMANDS)
        }, public=PUBLIC_COMMANDS, quick={"status": lambda _req: self.status_without_loop()})

    def _stop_for_restart(self) -> None:
        """SIGUSR2 (a package upgrade): drain and exit with RESTART_EXIT, leaving routing and
        the kill switch in place, so the machine stays closed until the new daemon, which
        systemd starts (Restart=on-failure), replaces them."""
        self.keep_sealed = True
        self._stop()

    def _stop(self) -> dict:
        """Ask the loop to stop; safe from any thread (signal handlers and the control socket)."""
        self.stop_requested = True
        self.loop.call_soon_threadsafe(self.stopping.set)
        return {"state": "stopping", "pid": os.getpid()}

    def status_from_thread(self) -> dict:
        """The status report, built on the control thread without waiting for the busy loop.

        Counters are plain ints, safe to read under the GIL; copying a dict or deque the loop
        changes at that moment raises RuntimeError ("changed size during iteration"), and the
        next try gets through. Only if every try fails is the loop asked, between its steps.
        """
        report = self.status_without_loop()
        if report is not None:
            return report
        return asyncio.run_coroutine_threadsafe(self._status_on_loop(), self.loop).result(STATUS_LOOP_TIMEOUT_S)

    def status_without_loop(self) -> dict | None:
        """The status report if one of ``STATUS_TRIES`` reads gets through, else None; never
        waits (the control socket's reader answers root with it)."""
        for _ in range(STATUS_TRIES):
            try:
                return self.status()
            except RuntimeError:
                pass
        return None

    async def _status_on_loop(self) -> dict:
        return self.status()

    def _tcp_capture(self) -> str:
        """How TCP reaches the forwarder, for ``status``."""
        r = self.redirect
        if r is None:
            return "tun"
        return "redirect" if r.ipv6 or self.ipv6 != "captured" else "redirect (IPv4; IPv6 via the TUN)"

    def status(self) -> dict:
        """The status report (the control socket's ``status``); ``report_ms`` is how long it took to build."""
        started = time.perf_counter()
        report = {
            "state": "stopping" if self.stop_requested else "up" if self.ready else "starting",
            "pid": os.getpid(),
            "version": __version__,
            "upstream": self.upstream.redacted(),
            "tun": self.cfg.tun.name,
            "mtu": self.cfg.tun.mtu,
            "offload": self.cfg.tun.offload,
            "ipv6": self.ipv6,
            "tcp_capture": self._tcp_capture(),
            "kill_switch": self.killswitch_on,
            "lockdown": self.cfg.capture.lockdown,
            "udp_policy": self.cfg.capture.udp,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }
        if self.dispatcher is not None:
            report.update(self.dispatcher.counters())
        if self.stack is not None:
            report["stack"] = self.stack.counters()
        if self.outbound is not None:
            report.update(self.outbound.status())
        if self.guard is not None:
            report["network"] = self.guard.status()
        report["report_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return report
