"""Loopback speed of the HTTP/1.1 request relay (``serve_http`` over a ``direct`` pool).

Usage: .venv/bin/python bench/http1_loopback.py [--repeats 3] [--size-mib 256]

The relay (a listener, ``serve_http`` per accepted connection, a real ``UpstreamPool``)
runs in this process's event loop; the application and the origin run in a child
process (blocking threads), so the relay's CPU time (process_time) is its own.
Workloads: small GETs on one keep-alive connection, one GET per new connection, a large
chunked body (through Python), a large Content-Length body (spliced), a large upload.
Repeated and interleaved (the VM is noisy): quote medians and bests. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

MIB = 1 << 20
WORKLOADS = ("small", "conns", "chunked", "sized", "upload")


# -- child: origin (threads) and application (blocking)

class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(MIB)
        if not data:
            raise EOFError
        self.buf += data

    def until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._fill()
        out = bytes(self.buf[: i + len(sep)])
        del self.buf[: i + len(sep)]
        return out

    def skip(self, n: int) -> None:
        while n:
            if not self.buf:
                self._fill()
            k = min(n, len(self.buf))
            del self.buf[:k]
            n -= k


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def _read_body(r: _Reader, headers: dict[str, str]) -> int:
    if "content-length" in headers:
        n = int(headers["content-length"])
        r.skip(n)
        return n
    total = 0
    while True:
        size = int(r.until(b"\r\n").strip(), 16)
        if size == 0:
            r.until(b"\r\n")
            return total
        r.skip(size + 2)
        total += size


def _origin(conn: socket.socket) -> None:
    r = _Reader(conn)
    block = b"\xa5" * MIB
    try:
        while True:
            head = r.until(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            got = _read_body(r, _headers(head)) if b"content-length" in head.lower() else 0
            path, _, q = target.partition("?")
            n = int(q[2:]) if q.startswith("n=") else 0
            if path == "/sized":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                for _ in range(n // MIB):
                    conn.sendall(block)
            elif path == "/chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                piece = b"%x\r\n" % MIB + block + b"\r\n"
                for _ in range(n // MIB):
                    conn.sendall(piece)
                conn.sendall(b"0\r\n\r\n")
            else:
                body = str(got).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def _child(relay_port: int, origin_fd: int, workload: str, count: int, size: int) -> None:
    listener = socket.socket(fileno=origin_fd)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_origin, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    start = time.perf_counter()
    moved = 0

    def request(sock: socket.socket, r: _Reader, line: bytes, body_size: int = 0) -> int:
        extra = b"Content-Length: %d\r\n" % body_size if body_size else b""
        sock.sendall(line + b"Host: origin.test\r\n" + extra + b"\r\n")
        if body_size:
            block = b"\x5a" * MIB
            for _ in range(body_size // MIB):
                sock.sendall(block)
        head = r.until(b"\r\n\r\n")
        return _read_body(r, _headers(head))

    if workload == "conns":
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", relay_port)) as sock:
                request(sock, _Reader(sock), b"GET /small HTTP/1.1\r\nConnection: close\r\n")
        moved = count
    else:
        with socket.create_connection(("127.0.0.1", relay_port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            r = _Reader(sock)
            if workload == "small":
                for _ in range(count):
                    request(sock, r, b"GET /small HTTP/1.1\r\n")
                moved = count
            elif workload == "upload":
                request(sock, r, b"POST /upload HTTP/1.1\r\n", size)
                moved = size
            else:
                moved = request(sock, r, f"GET /{workload}?n={size} HTTP/1.1\r\n".encode())
    print(json.dumps({"elapsed": time.perf_counter() - start, "moved": moved}), flush=True)


# -- parent: the relay under test

async def _trial(workload: str, count: int, size: int) -> dict:
    from atlantic.forwarder.http1 import serve_http
    from atlantic.pool.pool import UpstreamPool

    loop = asyncio.get_running_loop()
    origin = socket.create_server(("127.0.0.1", 0), backlog=512)
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    listener.setblocking(False)
    dst = ("127.0.0.1", origin.getsockname()[1])
    tasks: set[asyncio.Task] = set()
    async with UpstreamPool("direct", warm_tunnels=0) as pool:

        async def accept() -> None:
            while True:
                sock, _ = await loop.sock_accept(listener)
                sock.setblocking(False)
                task = asyncio.create_task(serve_http(sock, b"", dst, pool, to_destination=True))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(listener.getsockname()[1]), str(origin.fileno()),
             workload, str(count), str(size)], pass_fds=[origin.fileno()], stdout=subprocess.PIPE, text=True)
        origin.close()
        acceptor = asyncio.create_task(accept())
        cpu0 = time.process_time()
        try:
            out, _ = await asyncio.wait_for(asyncio.to_thread(child.communicate), 300)
        finally:
            cpu = time.process_time() - cpu0
            acceptor.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(acceptor, *tasks, return_exceptions=True)
            listener.close()
            if child.poll() is None:
                child.kill()
                child.wait()
    report = json.loads(out)
    rate = report["moved"] / report["elapsed"]
    unit_scale = 1e9 if workload in ("chunked", "sized", "upload") else 1
    return {"workload": workload, "rate": rate / unit_scale, "cpu_per_unit": cpu / (report["moved"] / unit_scale)}


async def _run(repeats: int, count: int, size: int) -> list[dict]:
    rows = []
    for _ in range(repeats):
        for workload in WORKLOADS:
            n = count if workload == "small" else count // 4
            rows.append(await _trial(workload, n, size))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=4000, help="small GETs (new connections: a quarter)")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        port, fd, workload, count, size = args.child
        _child(int(port), int(fd), workload, int(count), int(size))
        return
    rows = asyncio.run(_run(args.repeats, args.count, args.size_mib * MIB))
    units = {"small": "req/s", "conns": "conn/s", "chunked": "GB/s", "sized": "GB/s", "upload": "GB/s"}
    print(f"{'workload':<9} {'unit':<7} {'median':>10} {'best':>10} {'relay CPU/unit':>15}")
    for workload in WORKLOADS:
        sel = [r for r in rows if r["workload"] == workload]
        rates = [r["rate"] for r in sel]
        cpu = statistics.median(r["cpu_per_unit"] for r in sel)
        print(f"{workload:<9} {units[workload]:<7} {statistics.median(rates):>10.2f} {max(rates):>10.2f} {cpu:>15.6f}")


if __name__ == "__main__":
    main()
