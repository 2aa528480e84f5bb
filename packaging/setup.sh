#!/usr/bin/env bash
# Install what Atlantic and its lab need on a fresh Debian 12 machine: the system
# packages (only those missing) and the project's virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# adduser and init-system-helpers (deb-systemd-helper): the Debian package's maintainer
# scripts use them (tests/test_deb.py installs it into a throwaway root, whose programs come
# from this machine); minimal images lack them. systemd: systemd-analyze, which checks the
# unit (tests/test_unit_file.py). dpkg-deb (in dpkg) builds the package. ca-certificates:
# update-ca-certificates, which `atlantic ca install` runs (tests/test_ca_cli.py). dbus:
# dbus-daemon, the private bus the suspend watcher is tested on (tests/test_sleepwatch_dbus.py).
# chromium and libnss3-tools (certutil): a browser trusting Atlantic's CA in its NSS store speaks
# HTTP/2 through TLS termination (tests/test_tls_lab.py).
packages=(
    squid nginx-light nghttp2-proxy nftables ffmpeg curl iproute2 openssl
    apache2-utils tcpdump dnsutils procps python3-venv yt-dlp adduser
    init-system-helpers systemd util-linux ca-certificates dbus chromium libnss3-tools
)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test,bench]'
echo "setup: done ($(.venv/bin/atlantic version))"
