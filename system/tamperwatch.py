"""Notice at once when something may have undone the daemon's routing or nftables tables.

Two netlink sockets, read on the event loop: rtnetlink's rule and route groups (IPv4 and
IPv6), and nfnetlink's nftables group (what ``nft monitor`` hears: ``nft flush ruleset``,
``systemctl reload nftables``, another program's ``nft -f``). Nothing is parsed: any
message means "look now", and the guard's check reads what is really there. A receive
buffer that overflowed (ENOBUFS) lost messages, so it counts as one too.

The guard (:mod:`atlantic.client.netguard`) checks on each notification, within a
fraction of a second, instead of waiting for its next poll, and with notifications it
polls only rarely, as a safety net: an idle daemon no longer runs two ``nft`` processes
and a set of netlink dumps every few seconds. When a socket cannot be opened, ``start``
says so and the guard keeps its short poll.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

__all__ = ["TamperWatch"]

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 7, 8, 11, 19  # linux/rtnetlink.h
NFNLGRP_NFTABLES = 7  # linux/netfilter/nfnetlink.h


def _mask(*groups: int) -> int:
    """The bind() bitmask of netlink multicast groups numbered from 1."""
    mask = 0
    for group in groups:
        mask |= 1 << (group - 1)
    return mask


SUBSCRIPTIONS = (
    (NETLINK_ROUTE, _mask(RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)),
    (NETLINK_NETFILTER, _mask(NFNLGRP_NFTABLES)),
)
RECV_BUFFER = 1 << 20  # a burst (a full ruleset reloaded) fits; an overflow is a change anyway
READ_SIZE = 65536


class TamperWatch:
    """Calls ``on_change()`` on the loop after each batch of notifications."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.broken: str | None = None  # why the watch ended, if a socket failed
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> str | None:
        """Subscribe, on the running loop; None once watching, else why not (nothing is left
        open then)."""
        self._loop = asyncio.get_running_loop()
        try:
            for protocol, groups in SUBSCRIPTIONS:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
                sock.bind((0, groups))
                sock.setblocking(False)
        except OSError as exc:
            self.close()
            return f"cannot subscribe to netlink notifications ({exc.strerror or exc})"
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self._readable, sock)
        return None

    def close(self) -> None:
        for sock in self._socks:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []

    def _readable(self, sock: socket.socket) -> None:
        """Drain what is queued (the content does not matter), then report once. A socket
        that fails otherwise ends the watch (``broken`` says why): the guard polls again."""
        for _ in range(256):  # bounded: a flood still lets the loop run between batches
            try:
                sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # ENOBUFS: messages were lost, which is a change
                    self.broken = f"netlink notifications failed ({exc.strerror or exc})"
                    self.close()
                    break
        self.on_change()
