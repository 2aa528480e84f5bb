"""Workloads run in the lab's client namespace, shared by the benchmarks and `atlantic demo`.

Each returns measurements, never asserts: benchmarks print them, tests assert behaviour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from atlantic.lab.topology import LabEnv

# Debian's yt-dlp (urllib: a new connection per segment); PyPI's yt-dlp[default] in the
# virtual environment keeps its connections (requests) and is the benchmarks' ideal client.
DEBIAN_YTDLP = "/usr/bin/yt-dlp"


def ns(lab: LabEnv, argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` in the lab's client namespace (text output), bounded in time."""
    return subprocess.run(["ip", "netns", "exec", lab.client_ns, *argv], capture_output=True, text=True,
                          timeout=timeout, **kw)


def atlantic(lab: LabEnv, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`atlantic ARGS` in the client namespace."""
    return ns(lab, [sys.executable, "-m", "atlantic", *args], timeout=timeout)


def status(lab: LabEnv) -> dict:
    """`atlantic status --json` in the client namespace ({} if it printed nothing)."""
    return json.loads(atlantic(lab, "status", "--json").stdout or "{}")


def lab_config(lab: LabEnv, directory: Path, proxies: list[str], extra: str = "") -> Path:
    """A config in ``directory`` for Atlantic through the lab's Squids at ``proxies`` (in
    priority order): the password in a 0600 file, the health monitor probing the lab's
    origin, and ``extra`` lines at the end of [health]. The file itself is 0600 too."""
    pw = directory / "proxy-password"
    pw.write_text(lab.proxy_password + "\n")
    os.chmod(pw, 0o600)
    ups = "".join(f'[[upstream]]\nurl = "http://{lab.proxy_user}@{ip}:{lab.squid_port}"\npassword_file = "{pw}"\n\n'
                  for ip in proxies)
    conf = directory / "atlantic.toml"
    conf.write_text(f'{ups}[health]\nprobe_url = "http://{lab.origin_host}/small"\nexpected_status = 200\n'
                    f'echo_url = "http://{lab.origin_host}/ip"\n{extra}')
    os.chmod(conf, 0o600)
    return conf


def up_with(lab: LabEnv, conf: Path, env: dict[str, str] | None = None) -> None:
    """`atlantic down`, then `atlantic up --config conf` in the client namespace (the daemon
    inherits ``env`` when given); raises RuntimeError with the daemon's one line when it does
    not come up."""
    atlantic(lab, "down")
    res = ns(lab, [sys.executable, "-m", "atlantic", "up", "--config", str(conf)], timeout=60, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"atlantic up failed: {res.stderr.strip()}")


def atlantic_up(env: LabEnv, url: str, ca: str | None = None, settle_s: float = 0.5, monitor: bool = True,
                intercept: tuple[str, ...] = (), ca_dir: Path | None = None, tcp: str = "redirect",
                plain_http: str = "tunnel") -> str | None:
    """`atlantic up` in the client namespace with upstream ``url`` (and a CA for https://);
    the health monitor probes the lab's origin, or is off (``monitor=False``).

    ``intercept``: names whose HTTPS Atlantic terminates, with a local CA made first in
    ``ca_dir`` (`atlantic ca init`) and the lab's CA trusted for origins; returns the local
    CA's PEM, the one certificate applications must then trust (else None). ``tcp``: how TCP
    reaches the daemon (``[capture] tcp``: ``redirect``, the default, or ``tun``). ``plain_http``:
    ``[pool] plain_http`` (``tunnel``, the default, or ``forward``)."""
    health = (f'[health]\nprobe_url = "http://{env.origin_host}/small"\nexpected_status = 200\n'
              f'echo_url = "http://{env.origin_host}/ip"\n' if monitor else "[health]\nenabled = false\n")
    tls = ""
    if intercept:
        if ca_dir is None:
            raise ValueError("intercept needs a ca_dir for the local CA")
        names = ", ".join(f'"{n}"' for n in intercept)
        tls = f'[tls]\nintercept = [{names}]\nca_dir = "{ca_dir}"\norigin_ca_file = "{env.ca_file}"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:  # 0600: the URL has the password
        f.write(f'[upstream]\nurl = "{url}"\n' + (f'ca_file = "{ca}"\n' if ca else "") + tls + health
                + f'[capture]\ntcp = "{tcp}"\n[pool]\nplain_http = "{plain_http}"\n')
    try:
        if intercept:
            res = atlantic(env, "ca", "init", "--config", f.name)
            if res.returncode != 0:
                raise RuntimeError(f"atlantic ca init failed: {res.stderr.strip()}")
        up_with(env, Path(f.name))
    finally:
        os.unlink(f.name)
    time.sleep(settle_s)  # let the pool open its warm connections, as it would on a laptop
    return str(ca_dir / "ca.pem") if intercept else None


def atlantic_down(env: LabEnv) -> dict:
    """`atlantic down` in the client namespace; returns the last status (with counters)."""
    st = json.loads(ns(env, [sys.executable, "-m", "atlantic", "status", "--json"]).stdout or "{}")
    ns(env, [sys.executable, "-m", "atlantic", "down"])
    return st


def curl_times(env: LabEnv, urls: list[str], proxy: str | None, one_process: bool,
               progress: Callable[[], None] | None = None, cacert: str | None = None) -> list[float]:
    """curl's own time_total per URL: one process for all URLs, or a new process per URL;
    curl trusts ``cacert`` alone (default: the lab's CA)."""
    # --noproxy would override -x: only a run without a proxy option gets it.
    base = ["curl", "-sS", "--fail", "--cacert", cacert or env.ca_file, "-w", "%{time_total}\n"]
    base[1:1] = ["-x", proxy] if proxy else ["--noproxy", "*"]
    out: list[float] = []
    for batch in ([urls] if one_process else [[u] for u in urls]):
        argv = list(base)
        for u in batch:
            argv += ["-o", "/dev/null", u]
        res = ns(env, argv)
        if res.returncode != 0:
            raise RuntimeError(f"curl failed: {res.stderr.strip()}")
        out += [float(x) for x in res.stdout.split()]
        if progress is not None:
            for _ in batch:
                progress()
    return out


def ytdlp_seconds(env: LabEnv, proxy: str | None, exe: str = "yt-dlp", scheme: str = "http",
                  cacert: str | None = None) -> float:
    """Wall time for yt-dlp (``exe``) to download the lab's HLS stream over ``scheme``.

    Debian's and PyPI's yt-dlp (without the optional ``requests``) both open a new
    connection per segment. Over https, yt-dlp trusts ``cacert`` alone (default: the lab's
    CA), through OpenSSL's SSL_CERT_FILE with its certifi bundle turned off.
    """
    with tempfile.TemporaryDirectory(prefix="atlantic-ytdlp-") as d:
        argv = [exe, "--quiet", "--no-progress", "--no-cache-dir", "-o", f"{d}/video.%(ext)s",
                f"{scheme}://{env.origin_host}/hls/index.m3u8"]
        argv += ["--proxy", proxy] if proxy else []
        extra_env = None
        if scheme == "https":
            argv[1:1] = ["--compat-options", "no-certifi"]
            extra_env = {**os.environ, "SSL_CERT_FILE": cacert or env.ca_file}
        t0 = time.perf_counter()
        res = ns(env, argv, timeout=1200, env=extra_env)
        took = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"yt-dlp failed: {(res.stderr.strip().splitlines() or ['no output'])[-1]}")
    return took


def small_requests(env: LabEnv, mode: str, n: int) -> dict:
    """``n`` requests for /small (~100 B), one after another; per-request seconds and wall time.

    ``mode``: ``plain`` a new connection to the origin per request (what a captured
    application does), ``proxy`` a new connection to Squid per request (absolute-form),
    ``ideal`` one keep-alive connection to Squid for all of them.
    """
    server = f"{env.origin_ip}:80" if mode == "plain" else f"{env.proxy_ip}:{env.squid_port}"
    res = ns(env, [sys.executable, "-m", "atlantic.lab.measure", "small", mode, server, env.origin_host,
                   "--count", str(n), "--auth-env", "LAB_PROXY_AUTH"],
             env={**os.environ, "LAB_PROXY_AUTH": f"{env.proxy_user}:{env.proxy_password}"})
    if res.returncode != 0:
        raise RuntimeError(f"small requests ({mode}) failed: {res.stderr.strip()[-300:]}")
    return json.loads(res.stdout)


def downloads_argv(env: LabEnv, path: str, count: int, proxy: str | None) -> list[str]:
    """curl fetching ``count`` copies of ``path`` over HTTP at once (each on its own connection)."""
    argv = ["curl", "-sS", "--fail", "-Z", "--parallel-max", str(max(count, 1)), "--parallel-immediate",
            "-w", "%{size_download} %{time_total}\n"]
    argv += ["-x", proxy] if proxy else ["--noproxy", "*"]
    for _ in range(count):
        argv += ["-o", "/dev/null", f"http://{env.origin_host}{path}"]
    return argv


def download_rate(env: LabEnv, path: str, count: int, proxy: str | None) -> float:
    """Aggregate MB/s of ``count`` parallel downloads of ``path`` (bytes over the slowest's time)."""
    res = ns(env, downloads_argv(env, path, count, proxy))
    if res.returncode != 0:
        raise RuntimeError(f"curl failed: {res.stderr.strip()[-300:]}")
    rows = [line.split() for line in res.stdout.split("\n") if line.strip()]
    if len(rows) != count:
        raise RuntimeError(f"curl reported {len(rows)} of {count} downloads")
    return sum(float(size) for size, _ in rows) / max(float(t) for _, t in rows) / 1e6
