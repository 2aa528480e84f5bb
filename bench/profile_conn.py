"""CPU and latency of a new application connection through the forwarder and the pool.

Usage: .venv/bin/python bench/profile_conn.py [--label after] [--count 2000] [--repeats 3]
       [--code DIR] [--no-profile] [--upstream squid|h2]
       bench/profile_conn.py --bulk-mib 100 [--upstream h2 [--via-squid]] [--rate 100 [--piece 16384]]

Loopback only, no namespaces. In a temporary directory: an origin child process (this
script, ``--origin``: HTTP/1.1 keep-alive, every answer a 100-byte body) and a private
Squid on a loopback port (no cache, no auth, persistent connections both sides), killed
by PID on the way out. The code under test runs in this process's event loop: a real
``Dispatcher`` (forwarder/dispatch.py) serving a listening socket, whose NAT lookup maps
every accepted peer port to the origin, over a real ``UpstreamPool`` to Squid. So
``getrusage(RUSAGE_SELF)`` is the daemon side's own CPU (sniffing, the h11 relay, the
pool, the HTTP/1.1 connection to the proxy).

``--upstream h2``: the proxy is nghttpx ``--http2-proxy`` instead (TLS, ALPN h2, a private
CA; ``loopback.start_nghttpx``, as bench/profile_h2.py runs it) with the origin child as its
backend, so every request is a stream on the pool's one HTTP/2 connection (TLS included in
the daemon's CPU).

The applications run in a client child process (``--client``), so their CPU is not
counted. Workloads, as an application uses Atlantic:

- ``conns``: ``--count`` sequential new connections, one GET each (no ``Connection:
  close``: the client closes after the body, as curl does);
- ``warm``: ``--count`` GETs on one keep-alive connection through the dispatcher (what a
  request costs once its connection exists: ``conns`` minus ``warm`` is the connection);
- ``squid``: ``--count`` new connections straight to Squid (absolute-form), no Atlantic:
  the floor the peers set (``direct`` with ``--upstream h2``: straight to the origin).

``--bulk-mib N`` (instead of the workloads above): one N MiB download per run by curl (a
child process) through the dispatcher, reporting MB/s, time to first byte and daemon CPU
per 100 MB (results: bench/results/profile-h2-bulk-20261201.{json,txt}, one row per label
and upstream). ``--via-squid`` puts a Squid between nghttpx and the origin, as in the lab.
``--rate R`` paces the origin at R MB/s (SO_MAX_PACING_RATE); with ``--piece P`` it writes
P bytes at a time on a schedule instead, so data reaches the daemon a few frames at a time
as it does from a real network (loopback otherwise hands over 64 KB bursts, and the daemon
wakes ~400 times per 100 MB instead of thousands).

Each trial: p50/p90 of the client's time per request (connect to the last body byte),
requests (or connections) per second, daemon CPU per request. ``--repeats`` rounds,
workloads interleaved (the VM is shared and noisy; medians reported), after one warm-up.
Then ``conns`` once more under cProfile (top 30 by own time and by cumulative time).
``--code DIR`` imports ``atlantic`` from ``DIR/atlantic`` (a copy of the tree taken
before a change: before/after interleaved in one sitting). Results go, under
``--label``, into bench/results/profile-conn-20261201.json (``--stem`` names another
file); the .txt beside it is rewritten from every label the JSON holds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loopback import Children, free_port, profile_text, start_nghttpx, wait_tcp

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "profile-conn-20261201"
BODY = b"x" * 99 + b"\n"  # 100 bytes
MIB = 1 << 20
BULK_STEM = "profile-h2-bulk-20261201"
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux: TCP pacing, no fq needed
WORKLOADS = {"squid": ("conns", "warm", "squid"), "h2": ("conns", "warm", "direct")}
SQUID_NAME = "atlprofconn"  # Squid's -n: its shm names apart from any other Squid


# -- origin child: HTTP/1.1 keep-alive, 100-byte answers ---------------------------------

def _origin_conn(sock: socket.socket) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    block = b"\xa5" * MIB
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")  # GETs only: no request body
            query = dict(kv.split(b"=", 1) for kv in head.split(b" ", 2)[1].partition(b"?")[2].split(b"&") if kv)
            if b"n" not in query:
                sock.sendall(answer)
                continue
            n = int(query[b"n"])  # bulk: ``?n=N`` answers N bytes, ``&rate=R`` paced at R bytes/s
            if b"rate" in query:
                sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, int(query[b"rate"]))
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % n)
            piece = int(query.get(b"piece", 0))
            if piece and b"rate" in query:  # a trickle: ``piece`` bytes per write, on a schedule
                _trickle(sock, n, piece, int(query[b"rate"]), block)
                continue
            while n:
                k = min(n, MIB)
                sock.sendall(block if k == MIB else block[:k])
                n -= k
    except OSError:
        pass
    finally:
        sock.close()


def _trickle(sock: socket.socket, n: int, piece: int, rate: int, block: bytes) -> None:
    """Send ``n`` bytes as ``piece``-byte writes at ``rate`` bytes/s: what arrives from a
    real network a few segments at a time, where loopback would hand over 64 KB bursts."""
    data = memoryview(block)[:piece]
    start = time.monotonic()
    sent = 0
    while sent < n:
        due = int((time.monotonic() - start) * rate) + piece  # bytes the schedule allows by now
        while sent < min(due, n):
            k = min(piece, n - sent)
            sock.sendall(data[:k])
            sent += k
        if sent < n:
            time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))


def _origin(port_file: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_origin_conn, args=(conn,), daemon=True).start()


# -- client child: the applications --------------------------------------------------------

def _get(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    buf = b""
    while (i := buf.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed before the response head")
        buf += data
    head = buf[:i].lower()
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    need = i + 4 + length
    while len(buf) < need:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed mid-body")
        buf += data
    if not buf.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(buf[:80].decode("latin-1", "replace"))


def _client(workload: str, port: int, origin_port: int, count: int) -> None:
    authority = f"127.0.0.1:{origin_port}"
    target = f"http://{authority}/small" if workload == "squid" else "/small"
    request = (f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: profile-conn\r\n"
               "Accept: */*\r\n\r\n").encode()
    times = []
    perf = time.perf_counter
    start = perf()
    if workload == "warm":
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(count):
                t0 = perf()
                _get(sock, request)
                times.append(perf() - t0)
    else:
        for _ in range(count):
            t0 = perf()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                _get(sock, request)
                times.append(perf() - t0)
    elapsed = perf() - start
    print(json.dumps({"elapsed": elapsed, "times": times}), flush=True)


# -- the peers ---------------------------------------------------------------------------

SQUID_CONF = """\
http_port 127.0.0.1:{port}
visible_hostname profile-conn.test
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log none
cache_store_log none
logfile_rotate 0
coredump_dir {dir}
netdb_filename none
pinger_enable off
cache deny all
cache_mem 8 MB
http_access allow all
forwarded_for delete
via off
shutdown_lifetime 1 seconds
client_persistent_connections on
server_persistent_connections on
"""


class Peers:
    """The origin child and the proxy (a private Squid, or nghttpx in front of the origin
    for ``upstream="h2"``; in front of a Squid in front of the origin with ``via_squid``,
    as in the lab), started in ``tmp``; ``close()`` kills them by PID."""

    def __init__(self, tmp: Path, upstream: str = "squid", via_squid: bool = False) -> None:
        self.children = Children(signal.SIGINT)  # Squid: SIGTERM waits for its clients
        self.origin_port = self.children.serve(__file__, "--origin", tmp / "origin.port")
        self.upstream = upstream
        self.ca: str | None = None
        self.addresses: dict[str, str] = {}
        if upstream == "squid" or via_squid:
            self._start_squid(tmp)
        if upstream == "h2":
            backend = self.squid_port if via_squid else self.origin_port
            proxy = start_nghttpx(tmp, backend, self.children.spawn)
            self.url = f"https://localhost:{proxy.port}"
            self.ca, self.addresses = str(proxy.ca), {"localhost": "127.0.0.1"}
            self.floor_port, self.version = self.origin_port, proxy.version.splitlines()[0]
            if via_squid:
                self.version += f" -> {self.squid_version}"
            return
        self.url = f"http://127.0.0.1:{self.squid_port}"
        self.floor_port = self.squid_port
        self.version = self.squid_version

    def _start_squid(self, tmp: Path) -> None:
        self.squid_port = free_port()
        squid_dir = tmp / "squid"
        squid_dir.mkdir()
        (squid_dir / "squid.conf").write_text(SQUID_CONF.format(port=self.squid_port, dir=squid_dir))
        if os.geteuid() == 0:  # Squid drops to `proxy`: it must write its log and pid here
            shutil.chown(tmp, group="proxy")
            os.chmod(tmp, 0o750)
            shutil.chown(squid_dir, "proxy", "proxy")
        squid = self.children.spawn(["squid", "-N", "-n", SQUID_NAME, "-f", str(squid_dir / "squid.conf")])
        wait_tcp(self.squid_port, squid)
        self.squid_version = subprocess.run(["squid", "-v"], capture_output=True, text=True, timeout=10,
                                            check=False).stdout.splitlines()[0].strip()

    def close(self) -> None:
        self.children.close()


# -- the daemon side under test ------------------------------------------------------------

def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def _child_measured(argv: list[str], timeout: float,
                          profile: cProfile.Profile | None) -> tuple[str, int, float, float]:
    """Run the client ``argv`` (bounded, killed by its PID if late) while this process serves
    it: (its stdout, its exit status, this process's user and system CPU seconds meanwhile)."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if profile is not None:
        profile.enable()
    cpu0 = _cpu()
    try:
        out, _ = await asyncio.wait_for(asyncio.to_thread(child.communicate), timeout)
    finally:
        user, sys_ = (b - a for a, b in zip(cpu0, _cpu()))
        if profile is not None:
            profile.disable()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    return out, child.returncode, user, sys_


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Daemon:
    """A Dispatcher over an UpstreamPool to the proxy of ``peers``, on a loopback listener."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def __aenter__(self) -> Daemon:
        from atlantic.forwarder.dispatch import Dispatcher
        from atlantic.pool.pool import UpstreamPool
        from atlantic.pool.upstream import parse_upstream

        url = self.peers.url
        origin = ("127.0.0.1", self.peers.origin_port)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.pool = UpstreamPool(url, warm_tunnels=0, ca_file=self.peers.ca, addresses=self.peers.addresses)
        await self.pool.start()
        self.dispatcher = Dispatcher(parse_upstream(url), lambda nat_port: (("127.0.0.1", nat_port), origin),
                                     self.pool, idle_timeout=120.0)
        await self.dispatcher.serve(self.listener)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.dispatcher.aclose(2.0)
        await self.pool.aclose()
        self.listener.close()

    async def trial(self, workload: str, count: int, profile: cProfile.Profile | None = None) -> dict:
        """One client run of ``workload``; the daemon's CPU meanwhile."""
        port = self.peers.floor_port if workload in ("squid", "direct") else self.port
        argv = [sys.executable, __file__, "--client", workload, str(port), str(self.peers.origin_port), str(count)]
        out, returncode, user, sys_ = await _child_measured(argv, 600, profile)
        if returncode != 0:
            raise RuntimeError(f"client {workload} exited with {returncode}")
        report = json.loads(out)
        times = report["times"]
        return {"workload": workload, "count": count, "per_s": count / report["elapsed"],
                "p50_ms": _quantile(times, 0.5) * 1e3, "p90_ms": _quantile(times, 0.9) * 1e3,
                "cpu_us_per_req": (user + sys_) / count * 1e6, "sys_us_per_req": sys_ / count * 1e6}

    async def bulk(self, size: int, profile: cProfile.Profile | None = None, rate: float = 0,
                   piece: int = 0) -> dict:
        """One ``size``-byte download by curl (a child process: its CPU is not counted)
        through the dispatcher, the origin paced at ``rate`` MB/s (0: as fast as it goes),
        in ``piece``-byte writes when given; the daemon's CPU meanwhile."""
        authority = f"127.0.0.1:{self.peers.origin_port}"
        argv = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-H", f"Host: {authority}",
                "-w", "%{size_download} %{time_starttransfer} %{time_total}",
                f"http://127.0.0.1:{self.port}/big?n={size}" + (f"&rate={int(rate * 1e6)}" if rate else "")
                + (f"&piece={piece}" if piece else "")]
        out, returncode, user, sys_ = await _child_measured(argv, 300, profile)
        got, ttfb, total = out.split()
        if returncode != 0 or int(got) != size:
            raise RuntimeError(f"curl exited with {returncode} after {got} of {size} bytes")
        per_100mb = 1e8 / size
        return {"mb_s": size / float(total) / 1e6, "ttfb_ms": float(ttfb) * 1e3,
                "cpu_s_per_100mb": (user + sys_) * per_100mb, "sys_s_per_100mb": sys_ * per_100mb}


async def _run_bulk(peers: Peers, size: int, repeats: int, profile: bool, rate: float, piece: int) -> dict:
    """``repeats`` timed downloads of ``size`` bytes (after a warm-up), then one under cProfile."""
    async with Daemon(peers) as daemon:
        await daemon.bulk(min(size, 8 * MIB))  # warm-up: the pool's connection up, code paths hot
        trials = []
        for _ in range(repeats):
            t = await daemon.bulk(size, rate=rate, piece=piece)
            trials.append(t)
            print(f"  bulk {peers.upstream:<5} {t['mb_s']:7.1f} MB/s  ttfb {t['ttfb_ms']:.2f} ms  "
                  f"daemon CPU {t['cpu_s_per_100mb']:.3f} s/100MB (sys {t['sys_s_per_100mb']:.3f})", flush=True)
        summary = {k: statistics.median(t[k] for t in trials)
                   for k in ("mb_s", "ttfb_ms", "cpu_s_per_100mb", "sys_s_per_100mb")}
        summary["mb_s_best"] = max(t["mb_s"] for t in trials)
        summary["cpu_s_per_100mb_best"] = min(t["cpu_s_per_100mb"] for t in trials)
        profiles = {}
        if profile:
            prof = cProfile.Profile()
            t = await daemon.bulk(size, prof, rate, piece)
            profiles = {"cumulative": profile_text(prof, "cumulative", 25),
                        "tottime": profile_text(prof, "tottime", 25), "mb_s_under_profile": t["mb_s"]}
    return {"summary": summary, "trials": trials, "profiles": profiles}


def _write_bulk_text(doc: dict) -> str:
    size = doc["size_mib"]
    lines = [(f"profile_conn --bulk-mib {size}: one {size} MiB download ({size * MIB / 1e6:.1f} MB) by curl "
              "through a Dispatcher + UpstreamPool on loopback, plain HTTP from the application"),
             ("h2: a stream on an HTTPS connection to nghttpx --http2-proxy (TLS, ALPN h2); "
              "squid: HTTP/1.1 to a private Squid (the body spliced socket to socket)"),
             ("daemon CPU = getrusage(RUSAGE_SELF) user+sys of the dispatcher's process (curl, nghttpx, "
              "Squid and the origin are other processes); medians of the timed runs, best beside"), ""]
    lines.append(f"{'label':<14} {'upstream':<11} {'MB/s':>7} {'(best)':>7} {'ttfb ms':>7} "
                 f"{'CPU s/100MB':>11} {'(best)':>7} {'sys':>6}")
    for label, runs in doc["runs"].items():
        for upstream, run in runs.items():
            s = run["summary"]
            lines.append(f"{label:<14} {upstream:<11} {s['mb_s']:>7.1f} {s['mb_s_best']:>7.1f} {s['ttfb_ms']:>7.2f} "
                         f"{s['cpu_s_per_100mb']:>11.3f} {s['cpu_s_per_100mb_best']:>7.3f} "
                         f"{s['sys_s_per_100mb']:>6.3f}")
    for label, runs in doc["runs"].items():
        for upstream, run in runs.items():
            lines += ["", (f"== {label} / {upstream}: {run['when']}, {run['host']}, {run['cpus']} CPUs, "
                           f"{run['peer']}, python {run['python']}, code {run.get('code', '?')}")]
            if run.get("note"):
                lines.append(f"   {run['note']}")
            prof = run["profiles"]
            for sort in ("cumulative", "tottime") if prof else ():
                lines += ["", (f"-- {label} / {upstream}: cProfile top 25 by {sort} "
                               f"({prof['mb_s_under_profile']:.0f} MB/s under the profiler)"),
                          prof[sort].rstrip()]
    return "\n".join(lines) + "\n"


async def _run(peers: Peers, count: int, repeats: int, profile: bool) -> dict:
    workloads = WORKLOADS[peers.upstream]
    async with Daemon(peers) as daemon:
        for workload in workloads:  # warm-up: pool and Squid connections up, code paths hot
            await daemon.trial(workload, 100)
        trials = []
        for _ in range(repeats):
            for workload in workloads:
                t = await daemon.trial(workload, count)
                trials.append(t)
                print(f"  {workload:<6} {t['per_s']:7.0f}/s  p50 {t['p50_ms']:.3f} ms  p90 {t['p90_ms']:.3f} ms  "
                      f"daemon CPU {t['cpu_us_per_req']:.0f} us/req (sys {t['sys_us_per_req']:.0f})", flush=True)
        summary = {}
        for workload in workloads:
            sel = [t for t in trials if t["workload"] == workload]
            summary[workload] = {k: statistics.median(t[k] for t in sel)
                                 for k in ("per_s", "p50_ms", "p90_ms", "cpu_us_per_req", "sys_us_per_req")}
            summary[workload]["per_s_best"] = max(t["per_s"] for t in sel)
            summary[workload]["cpu_us_per_req_best"] = min(t["cpu_us_per_req"] for t in sel)
        profiles = {}
        if profile:
            prof = cProfile.Profile()
            t = await daemon.trial("conns", count, prof)
            profiles = {"conns": {"cumulative": profile_text(prof, "cumulative", 30),
                                  "tottime": profile_text(prof, "tottime", 30),
                                  "per_s_under_profile": t["per_s"]}}
        pool = daemon.pool.counters()
        reuse = {k: pool.get(k) for k in ("requests", "reused", "connections_opened", "h2_streams")}
    return {"summary": summary, "trials": trials, "profiles": profiles, "pool": reuse}


# -- result files --------------------------------------------------------------------------

def _write_text(doc: dict) -> str:
    if doc.get("upstream", "squid") == "h2":
        proxy, floor = "nghttpx --http2-proxy (TLS, ALPN h2) in front of the origin", "direct: new connections straight to the origin"
    else:
        proxy, floor = "a private Squid", "squid: new connections straight to Squid"
    lines = [(f"profile_conn: {doc['count']} requests per trial through a Dispatcher + UpstreamPool "
              f"to {proxy} on loopback, 100-byte origin body"),
             ("conns: one GET per new connection; warm: GETs on one keep-alive connection; "
              f"{floor} (no Atlantic)"),
             ("daemon CPU = getrusage(RUSAGE_SELF) user+sys of the dispatcher's process per request; "
              "medians of the timed runs (best in brackets)"), ""]
    lines.append(f"{'label':<10} {'workload':<8} {'req/s':>7} {'(best)':>7} {'p50 ms':>7} {'p90 ms':>7} "
                 f"{'CPU us/req':>10} {'(best)':>7} {'sys us':>6}")
    for label, run in doc["runs"].items():
        for workload, s in run["summary"].items():
            lines.append(f"{label:<10} {workload:<8} {s['per_s']:>7.0f} {s['per_s_best']:>7.0f} "
                         f"{s['p50_ms']:>7.3f} {s['p90_ms']:>7.3f} {s['cpu_us_per_req']:>10.0f} "
                         f"{s['cpu_us_per_req_best']:>7.0f} {s.get('sys_us_per_req', float('nan')):>6.0f}")
    for label, run in doc["runs"].items():
        lines += ["", (f"== {label}: {run['when']}, {run['host']}, {run['cpus']} CPUs, {run['peer']}, "
                       f"python {run['python']}, code {run.get('code', '?')}, pool {run.get('pool')}")]
        if run.get("note"):
            lines.append(f"   {run['note']}")
        for workload, prof in run["profiles"].items():
            for sort in ("tottime", "cumulative"):
                lines += ["", f"-- {label} / {workload}: cProfile top 30 by {sort} "
                              f"({prof['per_s_under_profile']:.0f} conn/s under the profiler)",
                          prof[sort].rstrip()]
    return "\n".join(lines) + "\n"


def _save_bulk(args: argparse.Namespace, run: dict) -> None:
    """Keep ``run`` under its label and upstream in the bulk JSON; rewrite the .txt beside it."""
    stem = args.stem if args.stem != STEM else BULK_STEM
    RESULTS.mkdir(exist_ok=True)
    jpath = RESULTS / f"{stem}.json"
    doc = json.loads(jpath.read_text()) if jpath.exists() else {}
    if doc and doc.get("size_mib") != args.bulk_mib:
        raise SystemExit(f"{jpath.name} holds {doc.get('size_mib')} MiB runs: pass another --stem")
    doc.update({"bench": "profile_conn --bulk-mib", "size_mib": args.bulk_mib, "repeats": args.repeats})
    upstream = "h2-squid" if args.upstream == "h2" and args.via_squid else args.upstream
    if args.rate:
        upstream += f"@{args.rate:g}" + (f"/{args.piece // 1024}k" if args.piece else "")
    doc.setdefault("runs", {}).setdefault(args.label, {})[upstream] = run
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    text = _write_bulk_text(doc)
    (RESULTS / f"{stem}.txt").write_text(text)
    print(text.split("\n\n== ")[0])
    print(f"wrote {jpath} and {stem}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="the name of this run in the result files")
    parser.add_argument("--note", default="", help="a line saying what this run measured")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", help="import atlantic from DIR/atlantic (a copy of an older tree)")
    parser.add_argument("--no-profile", action="store_true", help="timed runs only")
    parser.add_argument("--no-save", action="store_true", help="print only, write no result file")
    parser.add_argument("--stem", default=STEM, help=f"result file name without suffix (default {STEM})")
    parser.add_argument("--upstream", choices=("squid", "h2"), default="squid",
                        help="the proxy: Squid (HTTP/1.1) or nghttpx (HTTP/2 over TLS)")
    parser.add_argument("--via-squid", action="store_true",
                        help="with --upstream h2: nghttpx forwards to a private Squid, as in the lab")
    parser.add_argument("--bulk-mib", type=int, default=0,
                        help=f"instead: one download of this many MiB per run (results: {BULK_STEM})")
    parser.add_argument("--rate", type=float, default=0,
                        help="with --bulk-mib: the origin paces its sending at this many MB/s (SO_MAX_PACING_RATE)")
    parser.add_argument("--piece", type=int, default=0,
                        help="with --rate: the origin writes this many bytes at a time on a schedule instead")
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.origin:
        _origin(args.origin)
        return
    if args.client:
        workload, port, origin_port, count = args.client
        _client(workload, int(port), int(origin_port), int(count))
        return
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    import atlantic.forwarder.dispatch

    code = str(Path(atlantic.forwarder.dispatch.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="profile-conn-") as tmp:
        peers = Peers(Path(tmp), args.upstream, args.via_squid)
        try:
            if args.bulk_mib:
                result = asyncio.run(_run_bulk(peers, args.bulk_mib * MIB, args.repeats, not args.no_profile, args.rate, args.piece))
            else:
                result = asyncio.run(_run(peers, args.count, args.repeats, not args.no_profile))
        finally:
            peers.close()
    if args.no_save:
        return
    run = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "peer": peers.version, "code": code, "note": args.note,
           **result}
    if args.bulk_mib:
        _save_bulk(args, run)
        return
    RESULTS.mkdir(exist_ok=True)
    jpath = RESULTS / f"{args.stem}.json"
    doc = json.loads(jpath.read_text()) if jpath.exists() else {}
    if doc and doc.get("upstream", "squid") != args.upstream:
        raise SystemExit(f"{jpath.name} holds --upstream {doc.get('upstream', 'squid')} runs: pass another --stem")
    doc.update({"bench": "profile_conn", "count": args.count, "repeats": args.repeats, "upstream": args.upstream})
    doc.setdefault("runs", {})[args.label] = run
    jpath.write_text(json.dumps(doc, indent=2) + "\n")
    text = _write_text(doc)
    (RESULTS / f"{args.stem}.txt").write_text(text)
    print(text.split("\n\n== ")[0])
    print(f"wrote {jpath} and {args.stem}.txt")


if __name__ == "__main__":
    main()
