"""Telling systemd how the daemon is doing: ``sd_notify`` without libsystemd.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the unit started, and
with ``WatchdogSec=`` it restarts a daemon that stops sending ``WATCHDOG=1``. The pings
come from a task on the event loop (:func:`watchdog_task`), not from a thread: a thread
would go on pinging while the loop is wedged, and a wedged loop is exactly what the
watchdog is there to catch. The restart leaves the kill switch in place (fail closed).

The protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` (a
path, or ``@name`` for the abstract namespace). Outside systemd the variable is unset and
every call does nothing. Sending never blocks the loop (a non-blocking socket) and never
raises into the daemon: a lost notification costs a status line or, at worst, one ping,
while an exception here would take the data path down with it.

The variables are removed from the environment once read, as libsystemd's
``unset_environment`` does, so that ``nft`` and other children do not talk to systemd
in the daemon's name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import MutableMapping

log = logging.getLogger("atlantic")

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
MAX_STATUS_CHARS = 200  # what `systemctl status` shows on one line; the datagram stays far below PIPE_BUF


def notify_address(value: str | None) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None when it names none we can use (pure).

    ``@name`` is the abstract namespace (a leading NUL for the kernel); anything but an
    absolute path or ``@`` (``vsock:``, a relative path) is not supported.
    """
    if not value or len(value) < 2:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    return value if value[0] == "/" else None


def one_line(text: str) -> str:
    """``text`` as a single line of at most ``MAX_STATUS_CHARS`` characters (pure).

    A newline would end the ``STATUS=`` field and start a field systemd would obey
    (``READY=1`` in an error message quoting a peer, say).
    """
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= MAX_STATUS_CHARS else flat[: MAX_STATUS_CHARS - 3] + "..."


def watchdog_interval(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """Seconds between pings for ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` (pure), or None.

    Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping is not a
    restart. None when there is no watchdog, the value is not a positive integer, or
    ``$WATCHDOG_PID`` names another process (the variables were inherited, not meant for us).
    """
    if not usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """The daemon's side of ``sd_notify``; every method is a no-op outside systemd.

    Thread-safe (one ``sendto`` per message), so the control thread may report too.
    """

    def __init__(self, address: str | None = None, watchdog: float | None = None):
        self.address = address
        self._watchdog = watchdog
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # only around opening and closing the socket

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET`` and the watchdog variables, then remove all three from ``environ``
        (default ``os.environ``, so children do not inherit them)."""
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.pop(NOTIFY_ENV, None)
        interval = watchdog_interval(env.pop(WATCHDOG_USEC_ENV, None), env.pop(WATCHDOG_PID_ENV, None), pid)
        address = notify_address(raw)
        if raw and address is None:
            log.debug("sd_notify: unsupported %s=%r; not notifying", NOTIFY_ENV, raw)
        return cls(address, interval if address is not None else None)

    def __repr__(self) -> str:
        where = "off" if self.address is None else self.address.replace("\0", "@", 1)
        return f"<Notifier {where} watchdog={self._watchdog}>"

    def is_enabled(self) -> bool:
        """True when there is a socket to notify (the daemon runs under systemd)."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, or None when systemd expects none."""
        return self._watchdog

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE``) as one datagram; False when it was not sent."""
        if self.address is None:
            return False
        try:
            self._socket().sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # full queue (EAGAIN), systemd gone (ECONNREFUSED/ENOENT), ...
            log.debug("sd_notify: cannot send %s: %s", fields[0] if fields else "", exc.strerror or exc)
            return False
        return True

    def _socket(self) -> socket.socket:
        with self._lock:
            if self._sock is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                self._sock = socket.socket(socket.AF_UNIX, kind)
            return self._sock

    def ready(self, status: str) -> bool:
        """Start-up is complete (traffic flows): systemd now calls the unit active."""
        return self.send("READY=1", f"STATUS={one_line(status)}")

    def status(self, text: str) -> bool:
        """Replace the line ``systemctl status`` shows."""
        return self.send(f"STATUS={one_line(text)}")

    def stopping(self, status: str) -> bool:
        """Shutdown has begun (the drain): systemd stops the watchdog and starts TimeoutStopSec."""
        return self.send("STOPPING=1", f"STATUS={one_line(status)}")

    def reloading(self, status: str = "reloading", monotonic_usec: int | None = None) -> bool:
        """A reload has begun; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, now unless given) is what ``Type=notify-reload``
        (systemd 253+) needs to match this message to its SIGHUP; older versions ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 if monotonic_usec is None else monotonic_usec
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={one_line(status)}")

    def watchdog(self) -> bool:
        """One ``WATCHDOG=1`` ping: the event loop is turning."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (idempotent); a later message opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


async def watchdog_task(notifier: Notifier, interval: float | None) -> None:
    """Ping every ``interval`` seconds from the event loop until cancelled.

    Run it in the daemon's TaskGroup with ``notifier.watchdog_interval()``; when the loop
    stops turning, the pings stop and systemd restarts the daemon.
    """
    if interval is None or not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


__all__ = [
    "MAX_STATUS_CHARS",
    "Notifier",
    "notify_address",
    "one_line",
    "watchdog_interval",
    "watchdog_task",
]
