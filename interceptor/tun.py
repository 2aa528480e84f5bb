"""The TUN device: the only module that touches /dev/net/tun.

pytun-pmd3 creates the device (it passes our flags through, so IFF_VNET_HDR works);
it has no TUNSETOFFLOAD and no IPv4 address setter, so those are raw ioctls here.
With ``offload=True`` the kernel hands over 64 KiB GSO super-packets, each behind a
10-byte virtio_net_hdr, and may leave TCP checksums partial (``NEEDS_CSUM``).

The device is created in the network namespace of the calling thread.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading

from pytun_pmd3 import TunTapDevice

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C

MAX_PACKET = 65535


def _outside_event_loop(fn):
    """Run ``fn`` in a short-lived thread and return its result (or raise its error).

    pyroute2's synchronous API drives an event loop of its own, which cannot run in a
    thread whose loop is already running (the daemon's). A new thread inherits the
    caller's network namespace.
    """
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            out["error"] = exc

    thread = threading.Thread(target=run, name="netlink")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


class TunError(OSError):
    """The TUN device could not be created or configured."""


class TunDevice:
    """An open TUN device (non-blocking fd), optionally with virtio headers."""

    def __init__(self, name: str, *, mtu: int = 65520, offload: bool = True) -> None:
        """Create (or attach to) TUN *name* with *mtu*; *offload* enables GSO/CSUM."""
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            self._dev = TunTapDevice(name=name, flags=flags)
        except OSError as exc:
            hint = " (needs root or CAP_NET_ADMIN)" if exc.errno in (1, 13) else ""
            raise TunError(exc.errno, f"cannot create TUN {name!r}: {exc.strerror}{hint}") from None
        self.name = self._dev.name
        self.offload = offload
        self.header_len = 10 if offload else 0
        fd = self._dev.fileno()
        step = "configure the fd"
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            if offload:
                step = "enable TSO/checksum offload"
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            step = f"set MTU {mtu}"
            self._dev.mtu = mtu
        except OSError as exc:
            self._dev.close()
            raise TunError(exc.errno, f"cannot {step} on TUN {self.name}: {exc.strerror}") from None
        self.mtu = mtu

    def fileno(self) -> int:
        """The device's file descriptor (non-blocking)."""
        return self._dev.fileno()

    def add_ipv4(self, address: str, prefixlen: int) -> None:
        """Assign *address*/*prefixlen* to the device (replaces the primary IPv4 address)."""
        mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for req, raw in ((SIOCSIFADDR, socket.inet_aton(address)), (SIOCSIFNETMASK, mask.to_bytes(4, "big"))):
                ifr = struct.pack("16sH2s4s8s", self.name.encode(), socket.AF_INET, b"", raw, b"")
                try:
                    fcntl.ioctl(s.fileno(), req, ifr)
                except OSError as exc:
                    raise TunError(
                        exc.errno, f"cannot set {address}/{prefixlen} on {self.name}: {exc.strerror}"
                    ) from None

    def add_ipv6(self, address: str, prefixlen: int) -> None:
        """Assign IPv6 *address*/*prefixlen*, usable at once (no duplicate address detection)."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        ifa_f_nodad = 0x02
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "w") as f:
                f.write("0")

            def assign() -> None:
                with IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=self.name)[0]
                    ipr.addr("replace", index=idx, address=address, prefixlen=prefixlen, family=socket.AF_INET6,
                             flags=ifa_f_nodad)

            _outside_event_loop(assign)
        except (OSError, NetlinkError, IndexError) as exc:
            raise TunError(
                getattr(exc, "errno", None) or getattr(exc, "code", 0),
                f"cannot set {address}/{prefixlen} on {self.name}: {exc}",
            ) from None

    def up(self) -> None:
        """Bring the link up."""
        self._dev.up()

    def close(self) -> None:
        """Close the fd; a non-persistent device disappears with it."""
        self._dev.close()

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
