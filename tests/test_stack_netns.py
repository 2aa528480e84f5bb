"""The system stack end to end in a throwaway network namespace (root only).

The test thread enters the namespace with setns(2) for the duration of a test, so
the TUN, its packet thread, the listener and the clients all live in it; the
namespace is deleted afterwards whatever happens.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import subprocess
import threading
from contextlib import contextmanager

from atlantic.lab.throwaway import thread_in_netns

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPOption_NOP, raw

from atlantic.interceptor.policy import reject_quic
from atlantic.interceptor.stack import SystemStack

pytestmark = pytest.mark.lab_local  # root: namespaces and TUN

DEST = ("10.123.0.9", 80)
LISTEN = ("198.18.0.1", 7890)
TIMEOUT = 20.0


def netns():
    """A fresh atlt-stk-* namespace with lo up; the calling thread is inside it meanwhile."""
    return thread_in_netns("atlt-stk-")


@contextmanager
def running_stack(offload: bool = True, **kw):
    """A started SystemStack on atl0 in a fresh namespace, 10.123.0.0/24 routed into it."""
    with netns():
        st = SystemStack("atl0", LISTEN[0], "198.18.0.2", LISTEN[1], 65520 if offload else 1500, offload, **kw)
        st.start_thread()
        try:
            subprocess.run(["ip", "route", "add", "10.123.0.0/24", "dev", "atl0"], check=True, timeout=10)
            yield st
        finally:
            st.stop()


@pytest.fixture(params=[True, False], ids=["offload", "plain"])
def any_stack(request):
    with running_stack(offload=request.param) as st:
        yield st


@pytest.fixture
def stack():
    with running_stack() as st:
        yield st


def listener() -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(LISTEN)
    ls.listen(512)
    ls.settimeout(TIMEOUT)
    return ls


def sha_server(ls: socket.socket, st: SystemStack, result: dict, reply: bytes) -> threading.Thread:
    """Accept one flow, hash what arrives until EOF, answer *reply*, close."""

    def serve():
        c, peer = ls.accept()
        with c:
            c.settimeout(TIMEOUT)
            result["peer"], result["orig"] = peer, st.lookup(peer[1])
            h, buf = hashlib.sha256(), bytearray(1 << 18)
            while n := c.recv_into(buf):
                h.update(memoryview(buf)[:n])
            result["sha"] = h.hexdigest()
            c.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def transfer(st: SystemStack, size: int, during=None) -> None:
    """Send *size* random bytes to DEST through the stack and get 1 MB back; check both."""
    up, down = random.randbytes(size), random.randbytes(1 << 20)
    result: dict = {}
    with listener() as ls:
        t = sha_server(ls, st, result, down)
        with socket.create_connection(DEST, timeout=TIMEOUT) as c:
            view = memoryview(up)
            for i in range(0, size, 1 << 20):
                c.sendall(view[i : i + (1 << 20)])
                if during is not None and i == 0:
                    during()
            c.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := c.recv(1 << 18):
                got += chunk
            local = c.getsockname()
        t.join(TIMEOUT)
    assert result["peer"][0] == "198.18.0.2"
    assert result["orig"] == (local, DEST)
    assert result["sha"] == hashlib.sha256(up).hexdigest()
    assert got == down


def test_flow_reaches_listener_with_original_destination(any_stack):
    """A connect to 10.123.0.9:80 lands on the listener; lookup names it; data intact both ways."""
    transfer(any_stack, 8 << 20)
    c = any_stack.counters()
    assert c["sessions_opened"] == 1 and c["bytes_up"] > 8 << 20 and c["bytes_down"] > 1 << 20
    assert c["write_errors"] == c["loop_errors"] == 0


def test_200_concurrent_flows(stack):
    """200 flows opened at once each reach the listener with their own destination port."""

    async def main():
        seen = {}

        async def handle(r, w):
            peer = w.get_extra_info("peername")
            orig = stack.lookup(peer[1])
            data = await r.readexactly(16)
            seen[data] = orig
            w.write(data[::-1])
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, *LISTEN, backlog=512)
        sem = asyncio.Semaphore(200)

        async def client(i):
            async with sem:
                r, w = await asyncio.open_connection("10.123.0.%d" % (1 + i % 250), 1000 + i)
                msg = b"%016d" % i
                w.write(msg)
                assert await r.readexactly(16) == msg[::-1]
                w.close()

        async with server:
            await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(200))), TIMEOUT)
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 200
    for i in range(200):
        assert seen[b"%016d" % i][1] == ("10.123.0.%d" % (1 + i % 250), 1000 + i)


def garbage() -> list[bytes]:
    """Scapy-crafted malformed packets plus random bytes."""
    rnd = random.Random(7)
    good = raw(IP(src="198.18.0.1", dst="10.123.0.9") / TCP(sport=1, dport=80, flags="S"))
    crafted = [
        good[:30],
        b"\x44" + good[1:],
        b"\x65" + good[1:],
        raw(IP(src="198.18.0.1", dst="10.123.0.9", len=300) / TCP()),
        raw(IP(src="198.18.0.1", dst="10.123.0.9", flags="MF") / TCP(dport=80)),
        raw(IP(src="198.18.0.1", dst="10.123.0.9") / TCP(dataofs=15)),
        raw(IP(src="198.18.0.1", dst="10.123.0.9") / TCP(sport=5, dport=80, flags="A")),  # no session
        raw(IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=7890, dport=4444, flags="A")),
        raw(IP(src="198.18.0.1", dst="10.123.0.9", options=[IPOption_NOP()] * 8) / TCP(flags="A")),
        raw(IP(dst="10.123.0.9") / UDP(dport=53)),
        raw(IP(dst="10.123.0.9") / ICMP()),
    ]
    return crafted + [rnd.randbytes(rnd.randrange(1, 200)) for _ in range(500)]


def inject(packets: list[bytes]) -> None:
    """Hand packets to the stack as if the kernel had routed them into the TUN."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)) as s:
        for p in packets:
            try:
                s.sendto(p, ("atl0", 0x0800))
            except OSError:
                pass  # the kernel refuses a few shapes (e.g. empty); fine


def test_garbage_does_not_disturb_a_running_transfer(stack):
    """Malformed and random packets injected mid-transfer are dropped and counted; data intact."""
    transfer(stack, 16 << 20, during=lambda: inject(garbage()))
    c = stack.counters()
    assert c["dropped_malformed"] > 100 and c["dropped_no_session"] >= 1 and c["dropped_fragment"] >= 1
    assert c["loop_errors"] == 0


def test_listener_so_linger_zero_resets_the_app(stack):
    """A listener closing with SO_LINGER 0 makes the app's socket fail with ECONNRESET."""
    with listener() as ls, socket.create_connection(DEST, timeout=TIMEOUT) as c:
        conn, _ = ls.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        with pytest.raises(ConnectionResetError):
            c.recv(10)


def test_udp_443_is_refused_by_policy():
    """With the reject_quic policy, a UDP 443 send fails with ECONNREFUSED (ICMP unreachable)."""
    with running_stack(policy=reject_quic) as st:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(TIMEOUT)
            u.connect(("10.123.0.9", 443))
            u.send(b"quic?")
            with pytest.raises(ConnectionRefusedError):
                u.recv(10)
        assert st.counters()["policy_replies"] == 1


def test_stack_served_from_the_running_asyncio_loop():
    """start() inside a running loop serves the TUN with add_reader; a flow echoes through it."""

    async def main():
        st = SystemStack("atl0", LISTEN[0], "198.18.0.2", LISTEN[1])
        st.start()
        try:
            assert st._thread is None  # loop mode, no thread
            subprocess.run(["ip", "route", "add", "10.123.0.0/24", "dev", "atl0"], check=True, timeout=10)
            origs = []

            async def handle(r, w):
                origs.append(st.lookup(w.get_extra_info("peername")[1]))
                w.write(await r.readexactly(1 << 20))
                await w.drain()
                w.close()

            server = await asyncio.start_server(handle, *LISTEN)
            async with server:
                r, w = await asyncio.open_connection(*DEST)
                payload = random.randbytes(1 << 20)
                w.write(payload)
                echoed = await asyncio.wait_for(r.readexactly(1 << 20), TIMEOUT)
                w.close()
            assert echoed == payload and origs[0][1] == DEST
        finally:
            st.stop()

    with netns():
        asyncio.run(main())


def test_app_segment_after_session_expired_gets_rst():
    """Once its session has expired, an app's next segment is answered by a RST (ECONNRESET)."""
    from atlantic.interceptor.nat import NatConfig

    cfg = NatConfig(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), LISTEN[1], established_timeout=0.3)
    with running_stack(nat=cfg) as st, listener() as ls, socket.create_connection(DEST, timeout=TIMEOUT) as c:
        conn, _ = ls.accept()
        with conn:
            for _ in range(50):  # bounded wait for the once-a-second sweep
                if st.counters()["sessions_open"] == 0:
                    break
                threading.Event().wait(0.1)
            assert st.counters()["sessions_open"] == 0
            c.sendall(b"late")
            with pytest.raises(ConnectionResetError):
                c.recv(10)
        assert st.counters()["dropped_no_session"] >= 1
