"""Loopback throughput of the tunnel relay: splice relay vs sock_recv_into vs no relay.

Usage: .venv/bin/python bench/relay_loopback.py [--size-mib 512] [--repeats 3]

The relay runs in this process's event loop; the application and the
upstream server run in a child process (blocking threads), so the relay's
CPU time (process_time) is its own. Variants are interleaved and repeated
(the VM is shared and noisy): quote medians and bests, compare ratios.
Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 1 << 20
PIPE_SIZE = 1024 * 1024  # the relay's default; --pipe-kib to compare


# -- child: the application and the upstream server, blocking threads

def _child(target_port: int, sink_fd: int, size: int, direction: str) -> None:
    sink_listener = socket.socket(fileno=sink_fd)
    result: dict[str, int] = {}

    def send(sock: socket.socket) -> None:
        data = b"\xa5" * CHUNK
        for _ in range(size // CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    def drain(sock: socket.socket, key: str) -> None:
        buf = bytearray(CHUNK)
        total = 0
        while n := sock.recv_into(buf):
            total += n
        result[key] = total

    def server() -> None:
        conn, _ = sink_listener.accept()
        workers = []
        if direction in ("up", "both"):
            workers.append(threading.Thread(target=drain, args=(conn, "up")))
        if direction in ("down", "both"):
            workers.append(threading.Thread(target=send, args=(conn,)))
        else:
            conn.shutdown(socket.SHUT_WR)
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if direction == "down":
            drain(conn, "_")
        conn.close()

    srv = threading.Thread(target=server)
    srv.start()
    start = time.perf_counter()
    client = socket.create_connection(("127.0.0.1", target_port))
    workers = []
    if direction in ("up", "both"):
        workers.append(threading.Thread(target=send, args=(client,)))
    else:
        client.shutdown(socket.SHUT_WR)
    if direction in ("down", "both"):
        workers.append(threading.Thread(target=drain, args=(client, "down")))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if direction == "up":
        drain(client, "_")
    srv.join(timeout=120)
    elapsed = time.perf_counter() - start
    client.close()
    moved = result.get("up", 0) + result.get("down", 0)
    print(json.dumps({"elapsed": elapsed, "bytes": moved}), flush=True)


# -- parent: the relay under test

async def _relay_recv_into(a: socket.socket, b: socket.socket) -> None:
    """The alternative measured against: two coroutines, 256 KiB buffers."""
    loop = asyncio.get_running_loop()

    async def pump(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        while n := await loop.sock_recv_into(src, buf):
            await loop.sock_sendall(dst, view[:n])
        dst.shutdown(socket.SHUT_WR)

    await asyncio.gather(pump(a, b), pump(b, a))
    a.close()
    b.close()


async def _trial(variant: str, size: int, direction: str) -> dict:
    from atlantic.pool.splice import relay

    loop = asyncio.get_running_loop()
    sink = socket.create_server(("127.0.0.1", 0))
    app_listener = socket.create_server(("127.0.0.1", 0))
    app_listener.setblocking(False)
    sink_port = sink.getsockname()[1]
    target = sink_port if variant == "no relay" else app_listener.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(target), str(sink.fileno()), str(size), direction],
        pass_fds=[sink.fileno()], stdout=subprocess.PIPE, text=True,
    )
    sink.close()
    cpu0 = time.process_time()
    try:
        if variant != "no relay":
            app, _ = await asyncio.wait_for(loop.sock_accept(app_listener), 30)
            up = socket.socket()
            up.setblocking(False)
            await loop.sock_connect(up, ("127.0.0.1", sink_port))
            if variant == "splice":
                await asyncio.wait_for(relay(app, up, idle_timeout=60, pipe_size=PIPE_SIZE), 120)
            else:
                await asyncio.wait_for(_relay_recv_into(app, up), 120)
        out, _ = await asyncio.wait_for(asyncio.to_thread(child.communicate), 120)
    finally:
        app_listener.close()
        if child.poll() is None:
            child.kill()
            child.wait()
    cpu = time.process_time() - cpu0 if variant != "no relay" else 0.0
    report = json.loads(out)
    gb = report["bytes"] / 1e9
    return {"variant": variant, "direction": direction, "gbytes": gb,
            "elapsed_s": report["elapsed"], "gb_per_s": gb / report["elapsed"],
            "relay_cpu_s_per_gb": cpu / gb if gb else None}


async def _run(size: int, repeats: int) -> list[dict]:
    rows = []
    for rep in range(repeats):
        for direction in ("up", "down", "both"):
            for variant in ("no relay", "splice", "recv_into"):  # interleaved
                rows.append(await _trial(variant, size, direction))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipe-kib", type=int, default=1024)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        port, fd, size, direction = args.child
        _child(int(port), int(fd), int(size), direction)
        return
    global PIPE_SIZE
    PIPE_SIZE = args.pipe_kib * 1024
    rows = asyncio.run(_run(args.size_mib * CHUNK, args.repeats))
    summary = []
    print(f"{'variant':<10} {'dir':<5} {'GB/s median':>11} {'GB/s best':>9} {'relay CPU s/GB':>14}")
    for direction in ("up", "down", "both"):
        for variant in ("no relay", "splice", "recv_into"):
            sel = [r for r in rows if r["variant"] == variant and r["direction"] == direction]
            rates = [r["gb_per_s"] for r in sel]
            cpus = [r["relay_cpu_s_per_gb"] for r in sel if r["relay_cpu_s_per_gb"]]
            row = {"variant": variant, "direction": direction,
                   "gb_per_s_median": statistics.median(rates), "gb_per_s_best": max(rates),
                   "relay_cpu_s_per_gb_median": statistics.median(cpus) if cpus else None}
            summary.append(row)
            cpu = f"{row['relay_cpu_s_per_gb_median']:.3f}" if cpus else "-"
            print(f"{variant:<10} {direction:<5} {row['gb_per_s_median']:>11.2f} "
                  f"{row['gb_per_s_best']:>9.2f} {cpu:>14}")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"relay_loopback-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({
        "bench": "relay_loopback", "size_bytes": args.size_mib * CHUNK, "repeats": args.repeats,
        "pipe_size": PIPE_SIZE,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "summary": summary, "trials": rows,
    }, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
