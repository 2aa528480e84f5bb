"""Userspace delay line: read every packet from a TUN device, write it back D ms later.

The kernel here has no netem, so the lab's router routes forwarded packets into a TUN
device (policy routing) and this process returns them after the one-way delay; the
kernel then routes them normally. Run inside the router namespace::

    python -m atlantic.lab.delayline --dev dl0 --delay-ms 20

The TUN is opened with IFF_VNET_HDR and TSO/CSUM offloads so the kernel hands over
64 KiB GSO super-packets (lab-notes: ~11 Gbit/s at D=0, ~2 Gbit/s without). The
10-byte virtio header travels with each packet untouched.

`DelayQueue` is the pure core (time passed in); `run` is the bounded select loop.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import os
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04

READ_SIZE = 65536 + 256  # a 64 KiB GSO packet plus the virtio header
BATCH = 64  # packets read per wake-up before serving due packets again
IDLE_TIMEOUT_S = 1.0  # at idle we wake once a second, to notice a stop request


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of a delay queue."""

    queued: int
    queued_bytes: int
    dropped: int


class DelayQueue:
    """FIFO of packets, each released *delay* seconds after it arrived.

    The delay is constant, so arrival order is release order and a deque suffices.
    Bounded in bytes: over the limit a packet is dropped, like a router's full queue.
    """

    __slots__ = ("delay", "max_bytes", "_q", "_bytes", "dropped")

    def __init__(self, delay: float, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.delay = delay
        self.max_bytes = max_bytes
        self._q: collections.deque[tuple[float, bytes]] = collections.deque()
        self._bytes = 0
        self.dropped = 0

    def push(self, packet: bytes, now: float) -> bool:
        """Queue *packet* that arrived at *now*; False if dropped for lack of room."""
        if self._bytes + len(packet) > self.max_bytes:
            self.dropped += 1
            return False
        self._q.append((now + self.delay, packet))
        self._bytes += len(packet)
        return True

    def pop_due(self, now: float) -> list[bytes]:
        """Remove and return every packet whose release time is at or before *now*."""
        out = []
        q = self._q
        while q and q[0][0] <= now:
            out.append(q.popleft()[1])
        if out:
            self._bytes -= sum(map(len, out))
        return out

    def next_deadline(self) -> float | None:
        """Release time of the oldest packet, or None when empty."""
        return self._q[0][0] if self._q else None

    def stats(self) -> QueueStats:
        """Current counters."""
        return QueueStats(len(self._q), self._bytes, self.dropped)


def wait_timeout(deadline: float | None, now: float) -> float:
    """How long the loop may sleep: until the next release, at most IDLE_TIMEOUT_S."""
    if deadline is None:
        return IDLE_TIMEOUT_S
    return min(IDLE_TIMEOUT_S, max(0.0, deadline - now))


def open_tun(name: str) -> int:
    """Attach to TUN device *name* (created if absent) with vnet header and offloads."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        os.close(fd)
        raise
    return fd


def run(fd: int, delay_s: float, should_stop, wake_fd: int = -1,
        clock=time.monotonic) -> QueueStats:
    """Relay packets on *fd* with *delay_s* until ``should_stop()``; return the counters.

    *wake_fd* (a signal wakeup pipe) ends a wait early so a stop request is seen at once.
    """
    q = DelayQueue(delay_s)
    read, write = os.read, os.write
    watch = [fd] if wake_fd < 0 else [fd, wake_fd]
    while not should_stop():
        r, _, _ = select.select(watch, [], [], wait_timeout(q.next_deadline(), clock()))
        if fd in r:
            for _ in range(BATCH):
                try:
                    pkt = read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                if delay_s <= 0:
                    _write(write, fd, pkt)
                else:
                    q.push(pkt, clock())
        for pkt in q.pop_due(clock()):
            _write(write, fd, pkt)
    return q.stats()


def _write(write, fd: int, pkt: bytes) -> None:
    try:
        write(fd, pkt)
    except OSError as e:  # a packet the kernel refuses is a lost packet, not a crash
        if e.errno not in (errno.EAGAIN, errno.EINVAL, errno.EIO, errno.ENOBUFS):
            raise


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m atlantic.lab.delayline",
                                description="Delay every packet through a TUN device.")
    p.add_argument("--dev", default="dl0", help="TUN device name (default dl0)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay in ms")
    args = p.parse_args(argv)
    stop = []
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        fd = open_tun(args.dev)
    except OSError as e:
        print(f"delayline: cannot open TUN {args.dev}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"delayline: {args.dev} delay {args.delay_ms:g} ms", file=sys.stderr, flush=True)
    stats = run(fd, args.delay_ms / 1000.0, lambda: bool(stop), wake_r)
    print(f"delayline: stopped; dropped {stats.dropped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
