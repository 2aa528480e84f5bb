"""Benchmark of the TUN system stack: bulk throughput and connections/s through the NAT.

Runs as root. Builds a throwaway namespace atlt-stk-bench-*, and for every variant
starts a server process inside it (SystemStack + an asyncio listener that discards),
then drives it from this process (which enters the namespace) with a client socket:

    client --TCP--> kernel --route 10.123.0.0/24 dev atl0--> TUN --> NAT --> listener

Variants: MTU 1500 / 9000 / 65520, offload on/off, the loop in a thread or on the
asyncio loop (add_reader). Besides MB/s (noisy on a shared 2-core VM) it reports
the server process's CPU seconds per GB moved, which is steadier. Client sockets use cubic (set per socket; the host's
default BBR stalls behind a TUN, see lab-notes). Prints a table and writes
bench/results/tun_stack-<time>.json.

    sudo .venv/bin/python bench/tun_stack.py [--seconds 3] [--rounds 2] [--conns 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from atlantic.lab.throwaway import thread_in_netns

LISTEN = ("198.18.0.1", 7890)
DEST = ("10.123.0.9", 80)


# -- server side (runs inside the namespace via `ip netns exec`) -----------------------


def serve(mtu: int, offload: bool, mode: str) -> None:
    """Stack + discarding asyncio listener; prints READY, exits on stdin EOF with counters."""
    from atlantic.interceptor.stack import SystemStack

    st = SystemStack("atl0", LISTEN[0], "198.18.0.2", LISTEN[1], mtu, offload)

    class Sink(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1 << 20)

        def connection_made(self, transport) -> None:
            self.transport = transport
            st.lookup(transport.get_extra_info("peername")[1])  # as the real listener does

        def get_buffer(self, hint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, n: int) -> None:
            pass

        def eof_received(self) -> bool:
            return False  # close: the short-connection client waits for our FIN

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if mode == "asyncio":
            st.start(loop)
        else:
            st.start_thread()
        subprocess.run(["ip", "route", "add", "10.123.0.0/24", "dev", "atl0"], check=True, timeout=10)
        server = await loop.create_server(Sink, *LISTEN, backlog=1024)
        print("READY", flush=True)
        cpu0 = time.process_time()
        for _ in range(100):  # the driver sends "mark" after the bulk phase, then EOF
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            print(json.dumps({"cpu_s": time.process_time() - cpu0, "bytes_up": st.counters()["bytes_up"]}), flush=True)
        server.close()
        st.stop()
        print(json.dumps(st.counters()), flush=True)

    asyncio.run(main())


# -- driver side ---------------------------------------------------------------------


@contextmanager
def server(ns: str, mtu: int, offload: bool, mode: str):
    """The server process for one variant; yields a dict filled with its counters at exit."""
    cmd = ["ip", "netns", "exec", ns, sys.executable, __file__, "--serve", str(mtu), str(int(offload)), mode]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    counters: dict = {}
    try:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"stack server did not start: {line!r}")
        yield counters, proc
        proc.stdin.close()
        out = proc.stdout.readline()
        counters.update(json.loads(out) if out.strip() else {})
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by its handle
            proc.wait(5)


def client_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
    s.settimeout(10)
    return s


def bulk(seconds: float) -> float:
    """MB/s of one flow sending 1 MiB chunks for *seconds*."""
    chunk = b"\0" * (1 << 20)
    sent = 0
    with client_socket() as s:
        s.connect(DEST)
        t0 = time.monotonic()
        deadline = t0 + seconds
        for _ in range(1_000_000):  # bounded; the deadline ends it
            s.sendall(chunk)
            sent += len(chunk)
            if time.monotonic() >= deadline:
                break
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the listener's FIN: everything was delivered
        return sent / (time.monotonic() - t0) / 1e6


def short_conns(n: int) -> float:
    """Sequential connections/s: connect, send a byte, half-close, wait for the close."""
    t0 = time.monotonic()
    for _ in range(n):
        with client_socket() as s:
            s.connect(DEST)
            s.sendall(b"x")
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
    return n / (time.monotonic() - t0)


def translate_cost(n: int = 200_000) -> float:
    """Microseconds per established-flow packet in NatTable.translate (pure, no I/O)."""
    from atlantic.interceptor.nat import NatConfig, NatTable
    from atlantic.interceptor.packet import build_tcp

    t = NatTable(NatConfig(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), 7890))
    a, d = bytes([198, 18, 0, 1]), bytes([10, 123, 0, 9])
    syn = bytearray(build_tcp(a, d, 40000, 80, 1, 0, 0x02))
    t.translate(syn, 0, len(syn), 0.0, False)
    pkt = build_tcp(a, d, 40000, 80, 1, 1, 0x10) + bytes(1400)
    buf = bytearray(pkt)
    tr = t.translate
    t0 = time.perf_counter()
    for _ in range(n):
        buf[:] = pkt
        tr(buf, 0, len(buf), 1.0, False)
    t1 = time.perf_counter()
    for _ in range(n):
        buf[:] = pkt
    return ((t1 - t0) - (time.perf_counter() - t1)) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--mtus", default="1500,9000,65520")
    ap.add_argument("--modes", default="thread,asyncio")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tun_stack.py needs root (network namespaces, TUN)")
    variants = [
        (mtu, off, mode)
        for mode in args.modes.split(",")
        for mtu in map(int, args.mtus.split(","))
        for off in (False, True)
    ]
    results: dict = {}
    with thread_in_netns("atlt-stk-bench-") as ns:  # this thread inside a fresh namespace
        for rnd in range(args.rounds):  # interleave variants: the machine is shared and noisy
            for mtu, off, mode in variants:
                key = f"{mode} mtu={mtu} offload={'on' if off else 'off'}"
                r = results.setdefault(key, {"mtu": mtu, "offload": off, "mode": mode, "mb_s": [], "conn_s": []})
                with server(ns, mtu, off, mode) as (counters, proc):
                    r["mb_s"].append(bulk(args.seconds))
                    proc.stdin.write("mark\n")
                    proc.stdin.flush()
                    mark = json.loads(proc.stdout.readline())
                    r.setdefault("cpu_s_per_gb", []).append(mark["cpu_s"] / max(1, mark["bytes_up"]) * 1e9)
                    if mtu == 65520 or rnd == 0:
                        r["conn_s"].append(short_conns(args.conns))
                r["counters"] = counters
                print(f"round {rnd + 1}: {key}: {r['mb_s'][-1]:.0f} MB/s", file=sys.stderr, flush=True)
    cost = translate_cost()
    print(f"\nNatTable.translate, established flow: {cost:.2f} us/packet (pure Python, no I/O)\n")
    print(f"{'variant':34} {'MB/s med':>9} {'MB/s max':>9} {'CPU s/GB':>9} {'conn/s':>8} {'B/pkt up':>9}")
    for key, r in results.items():
        c = r["counters"]
        per = c.get("bytes_up", 0) // max(1, c.get("packets_in", 1))
        conn = f"{statistics.median(r['conn_s']):.0f}" if r["conn_s"] else "-"
        print(
            f"{key:34} {statistics.median(r['mb_s']):9.0f} {max(r['mb_s']):9.0f}"
            f" {statistics.median(r['cpu_s_per_gb']):9.2f} {conn:>8} {per:9d}"
        )
    best = max(results, key=lambda k: statistics.median(results[k]["mb_s"]))
    print(f"\nfastest bulk: {best}")
    out = Path(__file__).parent / "results" / f"tun_stack-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"translate_us": cost, "args": vars(args), "results": results, "fastest": best}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4])
    else:
        main()
