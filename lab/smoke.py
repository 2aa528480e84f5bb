"""The lab smoke run: the whole client namespace through Squid with `atlantic up`.

Brings the lab up (unless it already is), starts Atlantic in the client namespace with
the lab's Squid as upstream, fetches the origin's 2 MB file over HTTP and HTTPS with
plain curl (no proxy option), checks the bytes, shows `atlantic status` and the Squid
log lines that prove the path, then brings Atlantic (and the lab, if this run started
it) down again. Exit status 0 only if every step worked.

    sudo .venv/bin/python -m atlantic.lab.smoke [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from atlantic.lab import current, down, ns_exec_argv, up

console = Console()


def _atlantic(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ns_exec_argv(ns, [sys.executable, "-m", "atlantic", *args]),
                          capture_output=True, text=True, timeout=60)


def _fetch(env, url: str) -> tuple[bool, str]:
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "60", "--cacert", env.ca_file, url]
    t0 = time.perf_counter()
    res = subprocess.run(ns_exec_argv(env.client_ns, argv), capture_output=True, timeout=90)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        return False, f"curl failed ({res.returncode}): {res.stderr.decode(errors='replace').strip()}"
    ok = hashlib.sha256(res.stdout).hexdigest() == env.sha256_2mb
    return ok, f"{len(res.stdout):,} bytes in {took * 1000:.0f} ms, sha256 {'ok' if ok else 'WRONG'}"


def main() -> int:
    ap = argparse.ArgumentParser(description="Atlantic lab smoke run")
    ap.add_argument("--delay-ms", type=float, default=20)
    args = ap.parse_args()
    started_lab = current() is None
    ok = True
    with console.status("bringing the lab up"):
        env = up(delay_ms=args.delay_ms)
    console.print(f"lab up: client [bold]{env.client_ns}[/], Squid {env.proxy_ip}:{env.squid_port}, "
                  f"origin {env.origin_host}, RTT {2 * env.delay_ms:g} ms")
    log_before = len(Path(env.squid_access_log).read_text().splitlines())
    try:
        _atlantic(env.client_ns, "down")
        res = _atlantic(env.client_ns, "up", "--upstream", env.proxy_url)
        if res.returncode != 0:
            console.print(f"[red]atlantic up failed:[/] {res.stderr.strip()}")
            return 1
        console.print(f"[green]{res.stdout.strip()}[/]")
        for url in (f"http://{env.origin_host}/2mb", f"https://{env.origin_host}/2mb"):
            good, line = _fetch(env, url)
            ok &= good
            console.print(f"  curl {url}: {'[green]' if good else '[red]'}{line}[/]")
        status = _atlantic(env.client_ns, "status")
        console.print(status.stdout.rstrip())
        st = json.loads(_atlantic(env.client_ns, "status", "--json").stdout)
        ok &= st.get("state") == "up"
    finally:
        res = _atlantic(env.client_ns, "down")
        console.print(res.stdout.strip() or res.stderr.strip())
        new_log = Path(env.squid_access_log).read_text().splitlines()[log_before:]
        console.print("Squid's access log (the path is proven here):")
        for line in new_log[-4:]:
            console.print(f"  {line}")
        if started_lab:
            with console.status("taking the lab down"):
                down()
    console.print("[green]smoke run OK[/]" if ok else "[red]smoke run FAILED[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
