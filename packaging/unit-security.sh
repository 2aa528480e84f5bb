#!/usr/bin/env bash
# The units' exposure scores, offline (systemd-analyze security --offline=yes, systemd >= 250),
# written to bench/results/unit-security-<date>.txt: the figures the README quotes
# (atlantic.service first, then the early-boot atlantic-killswitch.service). Exec lines
# point at /bin/true in a copy, as the units' own binary need not be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out="bench/results/unit-security-$(date -u +%Y%m%d).txt"
for unit in atlantic.service atlantic-killswitch.service; do
    sed 's|^\(Exec[A-Za-z]*\)=.*|\1=/bin/true|' "packaging/$unit" > "$tmp/$unit"
done
{
    for unit in atlantic.service atlantic-killswitch.service; do
        echo "# packaging/$unit at $(git rev-parse --short HEAD), $(systemd-analyze --version | head -1)"
        (cd "$tmp" && systemd-analyze security --offline=yes --no-pager "$unit")
    done
} > "$out" 2>&1
grep "Overall exposure level" "$out"
