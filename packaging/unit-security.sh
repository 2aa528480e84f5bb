#!/usr/bin/env bash
# The unit's exposure score, offline (systemd-analyze security --offline=yes, systemd >= 250),
# written to bench/results/unit-security-<date>.txt: the figure the README quotes. ExecStart
# points at /bin/true in a copy, as the unit's own binary need not be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's|^ExecStart=.*|ExecStart=/bin/true|' packaging/atlantic.service > "$tmp/atlantic.service"
out="bench/results/unit-security-$(date -u +%Y%m%d).txt"
{
    echo "# packaging/atlantic.service at $(git rev-parse --short HEAD), $(systemd-analyze --version | head -1)"
    (cd "$tmp" && systemd-analyze security --offline=yes --no-pager atlantic.service)
} > "$out" 2>&1
tail -1 "$out"
