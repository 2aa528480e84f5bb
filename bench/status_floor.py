"""`status` under 100 saturating streams, beside the floor this machine sets for any server.

The suite's ``memory`` workload gives the daemon's `status` round trip under 100 streams of
100 MB. This puts a floor beside it, measured in the same seconds: a minimal server in a
process of its own (``--floor-server``: one thread, blocking accept, the daemon's own
report sent back as prebuilt bytes), which waits for no lock and does no work. What the
floor takes is the machine's: waking a thread on two cores shared with the relay, the
proxies and 100 transfers. What the daemon takes beyond it is its own.

Requests alternate between the two (the daemon's control socket, asked as ``atlantic
status`` does, with ``control.request``, then the floor's socket, 5 ms apart) for ``--seconds``, while the
streams run. Prints a table and writes bench/results/status-floor-<date>.{json,md}. Run as
root (the lab)::

    .venv/bin/python bench/status_floor.py [--peer atlantic-h2] [--seconds 40] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402 - bench/ is not a package
import suite  # noqa: E402

from atlantic.client.control import ControlError, request  # noqa: E402
from atlantic.lab import workloads as w  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = 100
GAP_S = 0.005
FLOOR_LIFETIME_S = 600.0  # the floor server exits by itself after this, whatever happens
START_TIMEOUT_S = 10.0


def floor_server(path: str, reply_file: str) -> None:
    """``--floor-server``: answer each connection's request line with the bytes of
    ``reply_file`` (plus a newline), one at a time, until FLOOR_LIFETIME_S has passed."""
    reply = Path(reply_file).read_bytes().rstrip(b"\n") + b"\n"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(1.0)
    end = time.monotonic() + FLOOR_LIFETIME_S
    while time.monotonic() < end:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(1.0)
            data = b""
            try:
                while b"\n" not in data and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(reply)
            except OSError:
                pass


def quantiles(ms: list[float]) -> dict:
    """The suite's percentiles (``report.percentiles``, as its `status` sampler reports them) and n."""
    if len(ms) < 100:
        raise RuntimeError(f"only {len(ms)} round trips: too few for a p99")
    return {**{k: round(v, 3) for k, v in report.percentiles(ms).items()}, "n": len(ms)}


def one_run(env, peer, seconds: float, tmp: Path) -> dict:
    """One repeat: the peer up, 100 streams, the two servers asked in turn; their round trips."""
    with suite.running(env, peer) as r:
        control = suite.control_socket(env)
        report = request(control, "status")
        (tmp / "report.json").write_text(json.dumps(report))
        floor_path = tmp / "floor.sock"
        floor_path.unlink(missing_ok=True)  # the previous repeat's
        floor = subprocess.Popen([sys.executable, __file__, "--floor-server", str(floor_path), str(tmp / "report.json")])
        streams = None
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    request(floor_path, "status")
                    break
                except ControlError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"the floor server did not answer within {START_TIMEOUT_S:g} s")
            argv = ["ip", "netns", "exec", env.client_ns, *w.downloads_argv(env, "/100mb", STREAMS, None)]
            streams = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0)  # the streams at full speed before the first sample
            times: dict[str, list[float]] = {"daemon": [], "floor": []}
            errors = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end and streams.poll() is None:
                for name, path in (("daemon", control), ("floor", floor_path)):
                    t0 = time.perf_counter()
                    try:
                        request(path, "status")
                        times[name].append((time.perf_counter() - t0) * 1000)
                    except ControlError:  # counted: a benchmark reports, it does not stop
                        errors += 1
                    time.sleep(GAP_S)
            still_loaded = streams.poll() is None
        finally:
            for proc in (streams, floor):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return {"daemon": quantiles(times["daemon"]), "floor": quantiles(times["floor"]), "errors": errors,
                "streams_ran_throughout": still_loaded, "report_bytes": len(json.dumps(report)), "pid": r.pid}


def table(result: dict) -> str:
    lines = [f"`status` round trip (ms) under {STREAMS} streams of 100 MB at RTT 0, {result['meta']['peer']}: "
             "the daemon's control socket against a bare single-threaded server (the floor), asked in turn", "",
             "| repeat | server | p50 | p95 | p99 | max | n |", "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(result["runs"], 1):
        for name in ("daemon", "floor"):
            q = run[name]
            lines.append(f"| {i} | {name} | {q['p50']:.2f} | {q['p95']:.2f} | {q['p99']:.2f} | {q['max']:.2f} | {q['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="atlantic-h2", choices=[p.slug for p in suite.PEERS if p.kind == "atlantic"])
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    env = suite.lab_at(0.0)
    peer = {p.slug: p for p in suite.PEERS}[args.peer]
    runs = []
    with tempfile.TemporaryDirectory(prefix="atl-status-floor-") as tmp:
        for i in range(args.repeat):
            run = one_run(env, peer, args.seconds, Path(tmp))
            runs.append(run)
            print(f"repeat {i + 1}: daemon p50 {run['daemon']['p50']:.2f} p99 {run['daemon']['p99']:.2f}  "
                  f"floor p50 {run['floor']['p50']:.2f} p99 {run['floor']['p99']:.2f}", file=sys.stderr, flush=True)
    result = {"benchmark": "status-floor", "meta": {**suite.machine(), "peer": peer.name, "streams": STREAMS,
                                                     "seconds": args.seconds}, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"status-floor-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(table(result))
    print(table(result))
    print(f"wrote {stem}.{{json,md}}")
    return stem


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-server"]:
        floor_server(sys.argv[2], sys.argv[3])
    else:
        main()
