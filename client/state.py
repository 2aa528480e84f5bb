"""Where a running daemon keeps its state, per network namespace, and who may read it.

Two Atlantic instances in two network namespaces share ``/run`` (the mount namespace),
so each keeps its files in a directory named after its network namespace. ``status``
and ``down`` run in the same namespace find their own daemon; a state file left by a
crash still tells ``down`` what to undo.

Layout under ``state_dir`` (default ``/run/atlantic``, root's, mode 0755)::

    net<inode>/          0700: state.json, daemon.log, fakeip.json (every name the machine
                         resolved), all 0600
    net<inode>.sock      the control socket, beside the private directory so that other
                         users can still ask ``status`` (see ``control.socket_access``)
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

# No `logging` or `dataclasses` here: `atlantic status` imports this module, and those two
# cost ~15 ms of its start-up (bench/startup.py).

DIR_MODE = 0o700
FILE_MODE = 0o600
STATE_DIR_MODE = 0o755  # the top directory: other users reach the sockets in it, nothing else


class StateDirError(Exception):
    """The state directory is unsafe or unusable; the message is one line with the fix."""


def netns_id(ns_file: str = "/proc/self/ns/net") -> str:
    """A name for a network namespace (its inode; default: this process's), stable while it exists."""
    return f"net{os.stat(ns_file).st_ino}"


class StatePaths:
    """The files of one namespace's daemon: a frozen value that compares and hashes by ``dir``.

    Written out by hand rather than ``@dataclass(frozen=True, slots=True)``: importing
    ``dataclasses`` alone costs ~10 ms, a fifth of ``atlantic status``'s budget.
    """

    __slots__ = ("dir",)
    dir: Path

    def __init__(self, dir: Path) -> None:
        object.__setattr__(self, "dir", dir)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: StatePaths is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: StatePaths is frozen")

    def __eq__(self, other) -> bool:
        return self.dir == other.dir if type(other) is StatePaths else NotImplemented

    def __hash__(self) -> int:
        return hash((self.dir,))

    def __repr__(self) -> str:
        return f"StatePaths(dir={self.dir!r})"

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
        return self.dir.with_name(f"{self.dir.name}.sock")

    @property
    def log_file(self) -> Path:
        return self.dir / "daemon.log"

    @property
    def fakeip_file(self) -> Path:
        return self.dir / "fakeip.json"


def unsafe_dir_reason(path: Path) -> str | None:
    """Why ``path`` must not be a state directory (one line), or None when it is fine.

    It and every directory above it must belong to root (or to you, when you are not
    root) and be writable by no one else (above it, a sticky directory such as /tmp is
    fine: no one can rename what is in it); ``path`` itself must not be a symbolic link.
    A directory that does not exist yet is judged by the directories above it.
    """
    owners = {0, os.geteuid()}
    fix = "use a directory only root can write, such as /run/atlantic"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symbolic link: name the directory itself"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a directory"
        if st.st_uid not in owners:
            return f"{path} belongs to uid {st.st_uid}, not root: {fix}"
        if st.st_mode & 0o022:
            return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): {fix}"
    for parent in path.parents:
        try:
            pst = os.stat(parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot inspect {parent}: {exc.strerror}"
        if pst.st_uid not in owners:
            return f"{parent} (above the state directory) belongs to uid {pst.st_uid}, not root: {fix}"
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            return (f"{parent} (above the state directory) is writable by other users "
                    f"(mode {stat.S_IMODE(pst.st_mode):04o}): {fix}")
    return None


def ensure_state_dir(paths: StatePaths) -> None:
    """Create the state directories, or make existing ones private: the namespace's
    directory 0700, every file in it 0600, any symbolic link in it removed (never followed).

    Raises StateDirError when the directory above is unsafe (see ``unsafe_dir_reason``)
    or the namespace's directory belongs to someone else.
    """
    top = paths.dir.parent
    try:
        top.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirError(f"cannot create {top}: {exc.strerror}") from None
    if (why := unsafe_dir_reason(top)) is not None:
        raise StateDirError(f"daemon.state_dir: {why}")
    try:
        paths.dir.mkdir(mode=DIR_MODE, exist_ok=True)
        st = os.lstat(paths.dir)
    except OSError as exc:
        raise StateDirError(f"cannot create {paths.dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise StateDirError(f"{paths.dir} is not a directory of yours: remove it (sudo rm -r {paths.dir}) and retry")
    os.chmod(paths.dir, DIR_MODE)  # no one else can change what is in it from here on
    for entry in os.scandir(paths.dir):
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(est.st_mode):
            os.unlink(entry.path)  # nothing of ours is a link: following one could chmod /etc/shadow
        elif not stat.S_ISDIR(est.st_mode) and est.st_mode & 0o077:
            os.chmod(entry.path, FILE_MODE)


def _private_file(path: Path, flags: int) -> int:
    """An fd on ``path`` opened with ``flags``, created 0600 or made so; never through a link."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_log(paths: StatePaths) -> int:
    """The daemon log opened for appending (0600), as an fd for the child's stdout/stderr."""
    ensure_state_dir(paths)
    return _private_file(paths.log_file, os.O_WRONLY | os.O_APPEND)


def write_state(paths: StatePaths, state: dict) -> None:
    """Write the state file atomically (a reader sees the old or the new, never half), 0600."""
    ensure_state_dir(paths)
    tmp = paths.state_file.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with os.fdopen(_private_file(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, paths.state_file)


def read_state(paths: StatePaths) -> dict | None:
    """The state file's contents, or None when nothing is up (or it is unreadable: not root)."""
    try:
        state = json.loads(paths.state_file.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def remove_state(paths: StatePaths) -> None:
    """Remove the state file, the control socket and the directory if it is then empty."""
    legacy_socket = paths.dir / "control.sock"  # where daemons before issue 14 put it
    for f in (paths.state_file, paths.control_socket, legacy_socket, paths.state_file.with_suffix(".tmp")):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    with contextlib.suppress(OSError):
        paths.dir.rmdir()  # the log file stays for the user to read


def _log():
    import logging

    return logging.getLogger("atlantic")


def load_fakeip(path: Path, now: float, **kwargs):
    """The fake-IP map saved at ``path``, or a fresh one (``kwargs`` configure it).

    A file that cannot be read as a map is one warning line and is moved aside to
    ``<path>.bad`` (0600), so the daemon starts and the evidence stays.
    """
    from atlantic.dns import fakeip

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return fakeip.FakeIpPool(**kwargs)
    except OSError as exc:
        _log().warning("cannot read the fake-IP map %s (%s); starting with a fresh one", path, exc.strerror)
        return fakeip.FakeIpPool(**kwargs)
    try:
        return fakeip.FakeIpPool.from_json(json.loads(data), now, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any broken file means a fresh map, never a failed start
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    aside = path.with_name(path.name + ".bad")
    try:
        os.replace(path, aside)
        os.chmod(aside, FILE_MODE)
        kept = f"kept as {aside}"
    except OSError as exc:
        kept = f"could not move it aside: {exc.strerror}"
    _log().warning("the fake-IP map %s is corrupted (%s); starting with a fresh one (%s)", path, reason, kept)
    return fakeip.FakeIpPool(**kwargs)


def is_daemon_alive(pid: int) -> bool:
    """True when ``pid`` runs and is an Atlantic daemon (not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"atlantic" in cmdline and b"--foreground" in cmdline
