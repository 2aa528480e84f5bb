"""The TUN "system stack": the packet loop between the TUN device and the NAT table.

Every TCP flow an application opens through the TUN is rewritten by the NAT so the
kernel's own TCP delivers it to the listener at ``inet_addr:listen_port``; the
listener asks ``lookup(peer_port)`` where the flow was going. With ``inet6_addr``
IPv6 TCP is NAT'd the same way (``nat6``) to ``[inet6_addr]:listen_port``, where the
caller binds a second, IPv6 listener; NAT ports are unique across both families.
Everything else goes to a policy (default: drop; see ``policy.default_policy``).

To refuse a flow, the listener closes the accepted socket with SO_LINGER 0
(``struct.pack("ii", 1, 0)``): the kernel sends a RST, which the NAT carries back
to the application as a RST from the original destination (tested).

``start()`` serves the TUN from the running asyncio loop's ``add_reader`` (the
fastest in bench/tun_stack.py: no GIL hand-offs), ``start_thread()`` from a
dedicated thread. Both read up to ``batch`` packets per wake-up until EAGAIN (the
TUN has no recvmmsg: one read and one write per packet), rewrite in place in one
preallocated buffer, and keep counters only. Idle sessions are swept at most once
a second, when the loop wakes (on the asyncio loop: only when packets arrive).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import select
import threading
import time

from atlantic.interceptor.nat import DOWN, POLICY, REPLY, UP, NatConfig, NatTable
from atlantic.interceptor.nat6 import NatTable6
from atlantic.interceptor.packet import VNET_HDR_PLAIN
from atlantic.interceptor.policy import Policy, drop_all
from atlantic.interceptor.tun import TunDevice

SWEEP_INTERVAL = 1.0  # seconds between NAT expiry sweeps
IDLE_POLL_MS = 500  # the thread wakes this often at idle (stop is also signalled by a pipe)


class SystemStack:
    """TUN device + NAT + packet loop. ``start()``, ``lookup(port)``, ``counters()``, ``stop()``."""

    def __init__(
        self,
        tun_name: str = "atl0",
        inet_addr: str = "198.18.0.1",
        virtual_client_addr: str = "198.18.0.2",
        listen_port: int = 7890,
        mtu: int = 65520,
        offload: bool = True,
        *,
        prefixlen: int = 30,
        policy: Policy = drop_all,
        batch: int = 64,
        nat: NatConfig | None = None,
        inet6_addr: str | None = None,
        virtual_client6_addr: str | None = None,
        prefixlen6: int = 126,
    ) -> None:
        """Describe the stack; nothing touches the system before ``start``."""
        net = ipaddress.IPv4Network(f"{inet_addr}/{prefixlen}", strict=False)
        client = ipaddress.IPv4Address(virtual_client_addr)
        if client not in net or client in (net.network_address, net.broadcast_address):
            raise ValueError(f"virtual client {virtual_client_addr} must be a host address inside {net}")
        self.tun_name = tun_name
        self.inet_addr = inet_addr
        self.virtual_client_addr = virtual_client_addr
        self.listen_port = listen_port
        self.prefixlen = prefixlen
        self.mtu = mtu
        self.offload = offload
        self.batch = batch
        self._policy = policy
        self._nat = NatTable(
            nat
            or NatConfig(
                ipaddress.IPv4Address(inet_addr).packed,
                ipaddress.IPv4Address(virtual_client_addr).packed,
                listen_port,
            )
        )
        # IPv6 capture: a second NAT table, its own address on the TUN, the same listener port.
        self.inet6_addr = inet6_addr
        self.prefixlen6 = prefixlen6
        self._nat6: NatTable6 | None = None
        if inet6_addr is not None:
            net6 = ipaddress.IPv6Network(f"{inet6_addr}/{prefixlen6}", strict=False)
            client6 = ipaddress.IPv6Address(virtual_client6_addr or net6.network_address + 2)
            if client6 not in net6 or client6 == ipaddress.IPv6Address(inet6_addr):
                raise ValueError(f"virtual IPv6 client {client6} must be another address inside {net6}")
            self._nat6 = NatTable6(
                dataclasses.replace(
                    self._nat.cfg, inet_addr=ipaddress.IPv6Address(inet6_addr).packed, client_addr=client6.packed
                )
            )
            self._nat.peer, self._nat6.peer = self._nat6, self._nat
        self.virtual_client6_addr = str(client6) if inet6_addr is not None else None
        self._tun: TunDevice | None = None
        self._thread: threading.Thread | None = None
        self._loop = None
        self._stopping = False
        self._wake_r = self._wake_w = -1
        self._buf = bytearray(65536 + 256)
        self._mv = memoryview(self._buf)
        self._next_sweep = 0.0
        self.packets_in = self.packets_out = self.bytes_up = self.bytes_down = 0
        self.write_errors = self.policy_replies = self.loop_errors = 0

    # -- lifecycle -------------------------------------------------------------

    def _open(self) -> None:
        tun = TunDevice(self.tun_name, mtu=self.mtu, offload=self.offload)
        try:
            tun.add_ipv4(self.inet_addr, self.prefixlen)
            tun.up()
            if self.inet6_addr is not None:
                tun.add_ipv6(self.inet6_addr, self.prefixlen6)
        except BaseException:
            tun.close()
            raise
        self._tun = tun
        self._hl = tun.header_len

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Create the TUN (in the calling thread's namespace) and start serving it.

        On *loop*, or else the running asyncio loop, via ``add_reader`` (measured
        fastest: no GIL hand-offs between threads); with no loop at all, in a thread.
        """
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.start_thread()
                return
        self._open()
        self._loop = loop
        loop.add_reader(self._tun.fileno(), self._drain, self.batch)

    def start_thread(self) -> None:
        """Create the TUN and serve it from a dedicated thread (blocking polls release the GIL)."""
        self._open()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"stack-{self.tun_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving (a thread is waited for at most *timeout* s) and close the TUN.

        In loop mode call it from the loop's thread.
        """
        self._stopping = True
        if self._loop is not None and self._tun is not None:
            self._loop.remove_reader(self._tun.fileno())
            self._loop = None
        if self._thread is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._tun is not None:
            self._tun.close()
            self._tun = None

    # -- queries (any thread) ------------------------------------------------------

    def lookup(self, port: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """``(orig_src, orig_dst)`` (each ``(host, port)``) of the flow the listener sees from NAT port *port*.

        NAT ports are unique across IPv4 and IPv6, so the port alone names the flow.
        """
        found = self._nat.lookup(port)
        if found is None and self._nat6 is not None:
            return self._nat6.lookup(port)
        return found

    @property
    def ipv6(self) -> str:
        """``"captured"`` when IPv6 flows are NAT'd like IPv4, else ``"blocked"`` (routing refuses them)."""
        return "captured" if self._nat6 is not None else "blocked"

    def counters(self) -> dict[str, int]:
        """Snapshot of packet, byte, drop and session counters."""
        c = {
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "write_errors": self.write_errors,
            "policy_replies": self.policy_replies,
            "loop_errors": self.loop_errors,
        }
        c.update(self._nat.counters())
        if self._nat6 is not None:
            for k, v in self._nat6.counters().items():
                c[k] += v  # one set of totals; ipv6_sessions_open says how many are IPv6
            c["ipv6_sessions_open"] = len(self._nat6)
        policy_counters = getattr(self._policy, "counters", None)
        if policy_counters is not None:
            c.update({f"policy_{k}": v for k, v in policy_counters().items()})
        return c

    def send(self, packet: bytes) -> bool:
        """Write one bare IP packet into the TUN (a reply produced later, e.g. by DNS).

        Call it from the thread that serves the stack (the event loop in loop mode).
        Returns False if the device is gone or refused the packet (counted).
        """
        tun = self._tun
        if tun is None:
            return False
        try:
            os.write(tun.fileno(), VNET_HDR_PLAIN + packet if self._hl else packet)
        except OSError:
            self.write_errors += 1
            return False
        self.packets_out += 1
        self.policy_replies += 1
        return True

    def __repr__(self) -> str:
        return f"<SystemStack {self.tun_name} {self.inet_addr}:{self.listen_port} sessions={len(self._nat)}>"

    # -- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        fd = self._tun.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                if self._drain(self.batch):
                    continue  # more may be waiting: read again before polling
            except Exception:  # a bug must not kill the data path of the machine
                self.loop_errors += 1
                time.sleep(0.01)  # but must not spin either
            poller.poll(IDLE_POLL_MS)

    def _drain(self, budget: int) -> bool:
        """Process up to *budget* packets; True if the budget ran out before EAGAIN."""
        tun = self._tun
        if tun is None:
            return False
        fd = tun.fileno()
        buf, mv, bufs, hl = self._buf, self._mv, [self._buf], self._hl
        nat = self._nat
        # Without IPv6 capture the IPv4 table hands IPv6 to the policy. (Not `or`: an empty table is falsy.)
        nat6 = nat if self._nat6 is None else self._nat6
        translate, translate6 = nat.translate, nat6.translate
        readv, write = os.readv, os.write
        now = time.monotonic()
        pin = pout = up = down = werr = 0
        more = False
        try:
            for _ in range(budget):
                try:
                    n = readv(fd, bufs)
                except BlockingIOError:
                    break
                pin += 1
                if buf[hl] >> 4 == 6:
                    t = nat6
                    v = translate6(buf, hl, n, now, hl and buf[0] & 1)
                else:
                    t = nat
                    v = translate(buf, hl, n, now, hl and buf[0] & 1)
                if v == UP:
                    up += n - hl
                    out = mv[:n]
                elif v == DOWN:
                    down += n - hl
                    out = mv[:n]
                elif v == REPLY:
                    out = VNET_HDR_PLAIN + t.reply if hl else t.reply
                elif v == POLICY:
                    r = self._policy(mv[hl:n], t.info)
                    if not r:  # None or policy.DROP
                        continue
                    self.policy_replies += 1
                    out = VNET_HDR_PLAIN + r if hl else r
                else:
                    continue
                try:
                    write(fd, out)
                    pout += 1
                except OSError:
                    werr += 1
            else:
                more = True
        finally:
            self.packets_in += pin
            self.packets_out += pout
            self.bytes_up += up
            self.bytes_down += down
            self.write_errors += werr
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            nat.expire(now)
            if nat6 is not nat:
                nat6.expire(now)
        return more
