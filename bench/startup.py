"""Start-up cost of the ``atlantic`` command: ``python -c pass``, ``atlantic version`` and
``atlantic status --json`` answered by a real control socket, for two config files.

Usage: .venv/bin/python bench/startup.py [--runs 30] [--out FILE] [--before FILE] [--root DIR]

A real ``ControlServer`` (client/control.py) runs in this process and answers ``status``
with a status-shaped report; ``--config`` names a temporary config whose
``daemon.state_dir`` is a temporary directory, so each ``status`` run takes the whole
reply path (config, socket, JSON) without a daemon. Two configs are timed:

- ``status --json``: the shipped file (packaging/deb/atlantic.toml) with that state_dir;
- ``status --json (real)``: a laptop's (as in README.md): two ``[[upstream]]`` proxies
  with a username template and password files that exist (mode 600), [health], [pool],
  [capture], [tls], [tun], [routing] and [daemon].

``--root`` times another checkout's ``.venv`` (e.g. a ``git worktree`` of the code
before a change) with this script. Each command runs ``--runs`` times, interleaved, in
two modes:

- ``source``: this shell's environment as it is (here ``PYTHONDONTWRITEBYTECODE=1``:
  Atlantic's own modules are compiled from source on every start, as in this tree);
- ``bytecode``: bytecode cached (in a temporary ``PYTHONPYCACHEPREFIX``), as an installed
  package runs.

Prints a table (median and p90, ms) and writes a JSON result file (never over an existing
one); ``--before`` embeds an earlier result file's numbers under the key ``before`` (the
same script run on older code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout timed; --root changes it
DEFAULT_OUT = ROOT / "bench" / "results" / f"startup-{time.strftime('%Y%m%d-%H%M%S')}.json"
SHIPPED = Path(__file__).resolve().parent.parent / "packaging" / "deb" / "atlantic.toml"
REAL_CONFIG = """\
[[upstream]]
url = "http://customer-me@gw.example.net:7777"
password_file = "{tmp}/password"
username_template = "customer-{{user}}-cc-{{country}}-sessid-{{session}}-sesstime-{{minutes}}"
country = "us"
session_minutes = 10
connect_timeout_s = 10

[[upstream]]
url = "https://customer-me@backup.example.net:8443"
password_file = "{tmp}/password-backup"

[health]
probe_url = "http://cp.cloudflare.com/generate_204"
expected_status = 204
echo_url = "http://ip-api.com/json/?fields=query,countryCode"
active_interval_s = 30
standby_interval_s = 120
failback_hold_s = 60

[pool]
idle_timeout_s = 90
max_per_endpoint = 128
max_connections = 256
warm_tunnels = 2

[capture]
ipv6 = "capture"
tcp = "redirect"
udp = "drop"
kill_switch = true
lockdown = false
lan = ["192.168.1.0/24"]
allow_dhcp = false
allow_interfaces = ["docker0"]
ports = []
other_ports = "tunnel"
dns_resolver = "9.9.9.9:53"

[tls]
intercept = ["*.example-video.com"]

[tun]
name = "atl0"
address = "198.18.0.1/30"
mtu = 65520
offload = true

[routing]
table = 2026
fwmark = 0x2026
rule_priority = 32000

[daemon]
state_dir = "{state_dir}"
log_level = "info"
idle_timeout_s = 300
head_timeout_s = 30
"""
REPORT = {
    "state": "up", "pid": 4242, "version": "0.1.0", "tun": "atl0", "ipv6": "captured", "udp_policy": "drop",
    "upstream": "http://customer-alice@gw.example.net:7777", "uptime_s": 3725.0, "flows_active": 12,
    "flows_total": 1834, "flow_kinds": {"http": 402, "tls": 1420, "other": 12},
    "bytes_up": 12_345_678, "bytes_down": 987_654_321,
    "last_error": {"message": "CONNECT example.org:443 refused by the upstream", "count": 2, "age_s": 61.5},
    "pool": {"requests": 2210, "reused": 2101, "upstreams": [
        {"name": "http://customer-alice@gw.example.net:7777", "requests": 2210, "idle": 6, "busy": 3}]},
    "health": {"active": "http://customer-alice@gw.example.net:7777", "state": "healthy", "failovers": 0},
}


def _python() -> str:
    return str(ROOT / ".venv" / "bin" / "python")


def _atlantic() -> list[str]:
    script = ROOT / ".venv" / "bin" / "atlantic"
    return [str(script)] if script.exists() else [_python(), "-m", "atlantic"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples), 1), "p90_ms": round(_pct(samples, 0.9), 1),
            "min_ms": round(min(samples), 1), "runs": len(samples)}


def _check(name: str, res: subprocess.CompletedProcess) -> None:
    """Every timed run must have done its job: a fast wrong answer is no result."""
    if res.returncode != 0:
        raise SystemExit(f"{name} exited {res.returncode}: {res.stderr.strip()}")
    if name.startswith("status --json") and json.loads(res.stdout) != REPORT:
        raise SystemExit(f"status --json printed something else: {res.stdout[:200]!r}")
    if name == "version" and not res.stdout.startswith("atlantic "):
        raise SystemExit(f"version printed {res.stdout!r}")


def _configs(tmp: Path, state_dir: Path) -> dict[str, Path]:
    """The shipped config and a laptop's, both naming ``state_dir``, mode 644 as installed."""
    for name in ("password", "password-backup"):
        secret = tmp / name
        secret.write_text("hunter2\n")
        secret.chmod(0o600)
    shipped = tmp / "shipped.toml"
    shipped.write_text(SHIPPED.read_text().replace("[daemon]\n", f'[daemon]\nstate_dir = "{state_dir}"\n', 1))
    real = tmp / "real.toml"
    real.write_text(REAL_CONFIG.format(tmp=tmp, state_dir=state_dir))
    for f in (shipped, real):
        f.chmod(0o644)
    return {"status --json": shipped, "status --json (real)": real}


def measure(runs: int) -> dict:
    from atlantic.client.control import ControlServer
    from atlantic.client.state import StatePaths

    tmp = Path(tempfile.mkdtemp(prefix="atl-startup-"))
    try:
        state_dir = tmp / "state"
        state_dir.mkdir(mode=0o755)
        configs = _configs(tmp, state_dir)
        paths = StatePaths.for_namespace(state_dir)
        server = ControlServer(paths.control_socket, {"status": lambda _req: REPORT}, {"stop"})
        server.start()
        pycache = tmp / "pycache"
        base = {k: v for k, v in os.environ.items() if k != "ATLANTIC_CONFIG"}
        modes = {
            "source": base,
            "bytecode": {**{k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"},
                         "PYTHONPYCACHEPREFIX": str(pycache)},
        }
        commands = {
            "python -c pass": [_python(), "-c", "pass"],
            "version": [*_atlantic(), "version"],
            **{name: [*_atlantic(), "status", "--json", "--config", str(f)] for name, f in configs.items()},
        }
        samples: dict[str, dict[str, list[float]]] = {m: {c: [] for c in commands} for m in modes}
        try:
            for mode, env in modes.items():  # warm-up: fills the bytecode cache, checks every answer
                for name, argv in commands.items():
                    _check(name, subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False))
            for i in range(runs):
                order = [(m, c) for m in modes for c in commands]
                shift = i % len(order)  # rotate so no variant always runs first after a pause
                for mode, name in order[shift:] + order[:shift]:
                    start = time.perf_counter()
                    res = subprocess.run(commands[name], env=modes[mode], capture_output=True, text=True, check=False,
                                         timeout=30)
                    samples[mode][name].append((time.perf_counter() - start) * 1000)
                    _check(name, res)
        finally:
            server.close()
        return {
            "runs": runs,
            "source_env": {"PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")},
            "root": str(ROOT),
            "configs": {name: f.read_text() for name, f in configs.items()},
            "results": {m: {c: _summary(s) for c, s in by_cmd.items()} for m, by_cmd in samples.items()},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(title: str, results: dict) -> None:
    print(title)
    print(f"  {'mode':<9} {'command':<22} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}")
    for mode, by_cmd in results.items():
        for name, s in by_cmd.items():
            print(f"  {mode:<9} {name:<22} {s['median_ms']:>10.1f} {s['p90_ms']:>8.1f} {s['min_ms']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--before", type=Path, help="an earlier result file, embedded under 'before'")
    parser.add_argument("--root", type=Path, help="time this checkout's .venv instead (e.g. a worktree of older code)")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: result files are never overwritten; name another with --out")
    if args.root is not None:
        global ROOT
        ROOT = args.root.resolve()
    result = {"bench": "startup", "python": sys.version.split()[0], "argv": sys.argv[1:],
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), **measure(args.runs)}
    if args.before is not None:
        before = json.loads(args.before.read_text())
        result["before"] = {k: before[k] for k in ("when", "runs", "source_env", "root", "results") if k in before}
        print_table("before", result["before"]["results"])
    print_table("after" if args.before is not None else "now", result["results"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
