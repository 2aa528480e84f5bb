"""Suspend and resume as logind announces them: ``PrepareForSleep(b)`` on the system bus.

logind sends ``org.freedesktop.login1.Manager.PrepareForSleep(true)`` just before the
machine sleeps and ``PrepareForSleep(false)`` once it is back. The resume is reported as
a major network change through the same path as the clock-jump check of
:mod:`.netwatch` (``on_resume``: ``NetWatch.resumed``), so the two, and the netlink noise
of the resume, make one debounced change. Going to sleep, ``on_suspend`` may drop idle
connections while the network is still there to close them properly.

The subscription is a match rule with ``sender='org.freedesktop.login1'``: the bus
delivers only what the name's owner sends, so no other client can fake a resume. With no
system bus (a container, a machine without D-Bus) one info line says so and nothing more
happens: the clock-jump check still catches every suspend. A bus that goes away later is
reconnected with a growing pause.

jeepney (pure Python, asyncio) speaks D-Bus; it is imported only here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["INTERFACE", "MEMBER", "PATH", "SENDER", "SleepWatch"]

log = logging.getLogger("atlantic.system")

SENDER = "org.freedesktop.login1"
PATH = "/org/freedesktop/login1"
INTERFACE = "org.freedesktop.login1.Manager"
MEMBER = "PrepareForSleep"
CONNECT_TIMEOUT_S = 5.0
RETRY_S, RETRY_MAX_S = 5.0, 300.0
QUEUE = 16  # signals waiting to be handled (there are two per suspend)


class SleepWatch:
    """Calls ``on_suspend()`` before a suspend and ``on_resume()`` after it, until cancelled.

    ``bus``: "SYSTEM", or a D-Bus address (``unix:path=...``) for tests. Both callbacks run
    on the event loop and must not block.
    """

    def __init__(self, on_resume: Callable[[], None], on_suspend: Callable[[], None] | None = None,
                 *, bus: str = "SYSTEM") -> None:
        self.on_resume, self.on_suspend, self.bus = on_resume, on_suspend, bus
        self.subscribed = asyncio.Event()  # tests wait for it
        self.suspends = 0
        self.resumes = 0
        self.connected = False
        self._ever = False  # subscribed at least once: later failures are retried

    async def run(self) -> None:
        """Until cancelled; returns at once (one info line) when there is no bus to reach."""
        pause = RETRY_S
        while True:
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - whatever the bus does, say it in one line
                self.connected = False
                if not self._ever:
                    log.info("suspend/resume: no system D-Bus to hear logind (%s); the clock-jump "
                             "check stands in", _one_line(exc))
                    return
                if self.subscribed.is_set():  # lost after it worked: said once, not per retry
                    log.info("suspend/resume: lost the D-Bus connection (%s); reconnecting", _one_line(exc))
                    self.subscribed.clear()
                    pause = RETRY_S
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)

    async def _listen(self) -> None:
        from jeepney import MatchRule, MessageType
        from jeepney.bus_messages import message_bus
        from jeepney.io.asyncio import DBusRouter, Proxy, open_dbus_connection

        rule = MatchRule(type=MessageType.signal, sender=SENDER, interface=INTERFACE, member=MEMBER, path=PATH)
        # The bus filters by sender (it knows the name's owner); locally messages carry the
        # owner's unique name, so the local filter leaves the sender out.
        local = MatchRule(type=MessageType.signal, interface=INTERFACE, member=MEMBER, path=PATH)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            conn = await open_dbus_connection(self.bus)
        async with conn, DBusRouter(conn) as router:
            with router.filter(local, queue=asyncio.Queue(QUEUE)) as queue:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await Proxy(message_bus, router).AddMatch(rule)
                self.connected = True
                self.subscribed.set()
                self._ever = True
                log.info("suspend/resume: listening to logind's %s", MEMBER)
                while True:
                    msg = await _next(queue, router)
                    if msg.body and msg.body[0]:
                        self.suspends += 1
                        log.info("suspend/resume: the machine is about to sleep")
                        if self.on_suspend is not None:
                            self.on_suspend()
                    elif msg.body:
                        self.resumes += 1
                        log.info("suspend/resume: the machine woke up (logind)")
                        self.on_resume()


async def _next(queue: asyncio.Queue, router):
    """The next signal, or EOFError when the connection behind ``router`` ends."""
    receiver = getattr(router, "_rcv_task", None)  # jeepney's receive task: done when the connection is gone
    if receiver is None:
        return await queue.get()
    getter = asyncio.ensure_future(queue.get())
    try:
        done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter in done:
        return getter.result()
    raise EOFError("the bus closed the connection")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
