"""A throwaway network namespace that the calling thread enters for a block.

For tests and benchmarks that need a TUN or routes of their own without the whole lab:
``with thread_in_netns("atlt-stk-") as name: ...`` creates ``<prefix><random>`` with
loopback up, moves only this thread into it (setns), and always moves the thread back
and deletes the namespace afterwards.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def inside(name: str) -> Iterator[None]:
    """The calling thread is in named namespace ``name`` meanwhile (sockets made here stay in it)."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(orig)
    finally:
        os.close(orig)


@contextmanager
def thread_in_netns(prefix: str) -> Iterator[str]:
    """A fresh ``<prefix><hex>`` namespace with lo up; this thread is inside it meanwhile."""
    name = prefix + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        with inside(name):
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
