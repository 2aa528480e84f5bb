"""Where a running daemon keeps its state, per network namespace.

Two Atlantic instances in two network namespaces share ``/run`` (the mount namespace),
so each keeps its state file and control socket in a directory named after its
network namespace. ``status`` and ``down`` run in the same namespace find their own
daemon; a state file left by a crash still tells ``down`` what to undo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def netns_id(ns_file: str = "/proc/self/ns/net") -> str:
    """A name for a network namespace (its inode; default: this process's), stable while it exists."""
    return f"net{os.stat(ns_file).st_ino}"


@dataclass(frozen=True, slots=True)
class StatePaths:
    """The files of one namespace's daemon."""

    dir: Path

    @classmethod
    def for_namespace(cls, state_dir: Path, ns_file: str = "/proc/self/ns/net") -> StatePaths:
        """The paths under ``state_dir`` for a network namespace (default: the current one;
        else a bound namespace file such as ``/run/netns/<name>``)."""
        return cls(state_dir / netns_id(ns_file))

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def control_socket(self) -> Path:
        return self.dir / "control.sock"

    @property
    def log_file(self) -> Path:
        return self.dir / "daemon.log"


def write_state(paths: StatePaths, state: dict) -> None:
    """Write the state file atomically (a reader sees the old or the new, never half)."""
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, paths.state_file)


def read_state(paths: StatePaths) -> dict | None:
    """The state file's contents, or None when nothing is up (or it is unreadable)."""
    try:
        return json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return None


def remove_state(paths: StatePaths) -> None:
    """Remove the state file, the control socket and the directory if it is then empty."""
    for f in (paths.state_file, paths.control_socket, paths.state_file.with_suffix(".tmp")):
        try:
            f.unlink()
        except FileNotFoundError:
            pass
    try:
        paths.dir.rmdir()
    except OSError:
        pass  # the log file stays for the user to read


def is_daemon_alive(pid: int) -> bool:
    """True when ``pid`` runs and is an Atlantic daemon (not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"atlantic" in cmdline and b"--foreground" in cmdline
