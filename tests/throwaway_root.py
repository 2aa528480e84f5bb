"""A throwaway root for installing packages: this machine's ``/`` under an overlay whose
writes all land in a temporary upper directory, so dpkg and the maintainer scripts see a
real Debian system while the host's own files never change.

Every command runs in fresh private mount and network namespaces (``unshare``): the
overlay is mounted there and chrooted into, and it vanishes with the namespace when the
command ends, also after a failure or a kill. No mount outlives a command; the state
between commands is the upper directory. The network namespace is empty, so a
maintainer script running ``atlantic down`` can never touch the host's routing, and
``/run`` is a fresh tmpfs, so no daemon state of the host (``/run/atlantic``) is seen.

Not a test module: tests/test_deb.py imports it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

# Runs in the new namespaces: overlay, a private /proc, /run, /tmp and a /dev with the few
# device nodes scripts use (a tmpfs, so nothing a script does lands in the host's /dev);
# the packages read-only under /tmp/debs; then a clean environment in the chroot.
_ENTER = r"""
set -eu
upper=$1 work=$2 merged=$3 debs=$4; shift 4
mount -t overlay atlantic-throwaway -o "lowerdir=/,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount -t tmpfs -o mode=0755 tmpfs "$merged/run"
mount -t tmpfs -o mode=1777 tmpfs "$merged/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$merged/dev"
mknod -m 0666 "$merged/dev/null" c 1 3
mknod -m 0666 "$merged/dev/zero" c 1 5
mknod -m 0666 "$merged/dev/urandom" c 1 9
mkdir "$merged/tmp/debs"
mount --bind -o ro "$debs" "$merged/tmp/debs"
exec chroot "$merged" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive "$@"
"""

# What installing, removing and purging the package writes (the upper directory shows it),
# compared on the host before and after. Not all of /etc or /opt: on this shared machine
# other work (the lab's /etc/netns, apt) changes them at any time.
WATCHED_TREES = ("/usr/bin", "/lib/systemd", "/etc/systemd", "/etc/atlantic", "/opt/atlantic",
                 "/var/lib/atlantic", "/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/dpkg/info")
WATCHED_FILES = ("/etc/group", "/etc/group-", "/etc/gshadow", "/etc/gshadow-", "/etc/passwd",
                 "/var/lib/dpkg/status")


class ThrowawayRoot:
    """``run(argv)`` runs a command as root inside the overlay (see the module docstring);
    ``debs`` is where packages go to be seen as /tmp/debs/<name> inside."""

    def __init__(self, base: Path, debs: Path):
        self.base = base
        self.debs = debs
        self.upper, self.work, self.merged = base / "upper", base / "work", base / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True)

    def run(self, argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``argv`` in the root (text output captured, stdin empty: a dpkg prompt fails)."""
        cmd = ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", _ENTER, "sh",
               str(self.upper), str(self.work), str(self.merged), str(self.debs), *argv]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the scripts dpkg started, too
            proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def sh(self, script: str) -> subprocess.CompletedProcess:
        """Run a shell script in the root."""
        return self.run(["/bin/sh", "-c", script])

    def mounts(self) -> list[str]:
        """Lines of this (the host's) mount table naming the root's directories: none, ever."""
        return [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(self.base) in ln]

    def remove(self) -> None:
        """Delete the directories (the upper one holds root's files from the package)."""
        shutil.rmtree(self.base, ignore_errors=True)


def host_snapshot() -> dict[str, tuple]:
    """What ``WATCHED_*`` hold now: type, mode, size, mtime and link target of every entry
    in the trees, and the watched files' contents (hashed)."""
    snap: dict[str, tuple] = {}
    for top in WATCHED_TREES:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                snap[os.path.join(dirpath, name)] = _entry(os.path.join(dirpath, name))
        if os.path.lexists(top):
            snap[top] = _entry(top)
    for path in WATCHED_FILES:
        data = Path(path).read_bytes() if os.path.exists(path) else b""
        snap[path] = ("content", hashlib.sha256(data).hexdigest())
    return snap


def _entry(path: str) -> tuple:
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return (st.st_mode, st.st_size, st.st_mtime_ns, link)


def snapshot_changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """The paths that appeared, vanished or changed between two snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
