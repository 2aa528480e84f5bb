"""Origin content for the lab: deterministic test files and an HLS stream.

Everything is generated once into a cache directory (``/var/cache/atlantic-lab`` by
default) and reused by later ``lab up`` runs; a run that dies half way leaves no
partial result, because each artefact is built in a temporary directory and renamed
into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("ATLANTIC_LAB_CACHE", "/var/cache/atlantic-lab"))

#: name -> size in bytes; content is SHAKE-256 of the name, so it never changes.
TEST_FILES = {"2mb": 2 * 1024 * 1024, "100mb": 100 * 1024 * 1024}
SMALL_BODY = "atlantic-lab small response " + "." * 71 + "\n"  # 100 bytes
HLS_SEGMENTS = 20
HLS_SEGMENT_SECONDS = 4
HLS_TIMEOUT_S = 240.0
MEDIA_VERSION = 1  # bump to regenerate caches after a change of recipe


class MediaError(RuntimeError):
    """Generating the origin's content failed."""


@dataclass(frozen=True, slots=True)
class Media:
    """The generated web root and the checksums tests compare against."""

    root: Path
    sha256: dict[str, str]


def file_content(name: str, size: int) -> bytes:
    """The deterministic pseudo-random body of test file *name*."""
    return hashlib.shake_256(f"atlantic-lab/{name}".encode()).digest(size)


def ffmpeg_hls_argv(out_dir: Path) -> list[str]:
    """The ffmpeg command that renders the test HLS stream into *out_dir*."""
    seconds = HLS_SEGMENTS * HLS_SEGMENT_SECONDS
    gop = 25 * HLS_SEGMENT_SECONDS  # one keyframe per segment so cuts land exactly
    return [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-maxrate", "4M",
        "-bufsize", "8M", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-c:a", "aac", "-b:a", "96k",
        "-f", "hls", "-hls_time", str(HLS_SEGMENT_SECONDS), "-hls_playlist_type", "vod",
        "-hls_segment_filename", str(out_dir / "seg%03d.ts"),
        str(out_dir / "index.m3u8"),
    ]


def _build_files(tmp: Path) -> dict[str, str]:
    sums = {}
    for name, size in TEST_FILES.items():
        body = file_content(name, size)
        (tmp / name).write_bytes(body)
        sums[name] = hashlib.sha256(body).hexdigest()
    (tmp / "small").write_text(SMALL_BODY)
    return sums


def _build_hls(tmp: Path, log: Path) -> None:
    hls = tmp / "hls"
    hls.mkdir()
    with log.open("wb") as err:
        try:
            subprocess.run(ffmpeg_hls_argv(hls), stdout=err, stderr=err,
                           timeout=HLS_TIMEOUT_S, check=True)
        except subprocess.TimeoutExpired:
            raise MediaError(f"ffmpeg took over {HLS_TIMEOUT_S:.0f}s; see {log}") from None
        except subprocess.CalledProcessError as e:
            raise MediaError(f"ffmpeg failed (exit {e.returncode}); see {log}") from None


def ensure_media(cache_dir: Path = CACHE_DIR) -> Media:
    """Return the cached web root, generating it first if missing (bounded in time)."""
    root = cache_dir / f"www-v{MEDIA_VERSION}"
    manifest = root / "manifest.json"
    if manifest.is_file():
        return Media(root, json.loads(manifest.read_text()))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        sums = _build_files(tmp)
        _build_hls(tmp, cache_dir / "ffmpeg.log")
        (tmp / "manifest.json").write_text(json.dumps(sums, indent=1))
        _make_world_readable(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process won the race; its result is as good
            if not manifest.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Media(root, json.loads(manifest.read_text()))


def _make_world_readable(top: Path) -> None:
    # nginx workers run as nobody
    for dirpath, _dirs, files in os.walk(top):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
