#!/usr/bin/env bash
# Build dist/atlantic_<version>_<arch>.deb: Atlantic in its own virtualenv under
# /opt/atlantic/venv on the system's /usr/bin/python3 (Debian 12: 3.11), /usr/bin/atlantic,
# the systemd units (atlantic.service; atlantic-killswitch.service, the optional early-boot
# kill switch, disabled), /etc/atlantic/atlantic.toml (a conffile) and the maintainer
# scripts in packaging/deb/.
#
#   packaging/build-deb.sh [--output DIR] [--version VERSION] [--compress xz|zstd] [--install-deps]
#
# xz (the default, as Debian's archive) takes 15 s for the 60 MB venv, zstd 0.4 s for a
# 40% larger file: the tests use zstd; dpkg reads both since Debian 12.
#
# Needs python3-venv (packaging/setup.sh installs it; --install-deps does too) and the
# Python package index pip is configured with (the dependencies come from there, as in
# setup.sh); dpkg-deb is part of dpkg. If lintian is installed, its report is printed.
#
# Hand-rolled (venv, pip, dpkg-deb) rather than dh-virtualenv: dh-virtualenv wants a
# debian/ directory with a changelog (the version), debhelper and dpkg-buildpackage, about
# 30 MB of build tools for the same result; its one subtle step, moving a venv built
# elsewhere to its final path, is the few lines marked "relocate" below.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
version=
compress=xz
install_deps=false
while (($#)); do
    case "$1" in
        --output) out=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --compress) compress=$2; shift 2 ;;
        --install-deps) install_deps=true; shift ;;
        *) echo "build-deb: unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done

if $install_deps && ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

# The system interpreter, never pyenv's or a venv's first on PATH: the package must run
# on a machine that has only Debian's python. The venv points at python3.X itself, so a
# later change of Debian's default python3 does not break it.
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
python=/usr/bin/python$pyver
version=${version:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' atlantic/__init__.py)}
arch=$(dpkg --print-architecture)
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "build-deb: '$version' is not a Debian version (digits first, then A-Za-z0-9.+~-)" >&2
    exit 2
fi
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV
export PYTHONDONTWRITEBYTECODE=1  # byte code is compiled once, below, with the final paths

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root/opt/atlantic/venv

# Build the wheel from a copy of exactly what pyproject.toml packages: the tree's own
# build/ may hold stale modules that setuptools would put into the wheel.
dirs=$($python -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].values())')
mkdir "$work/src"
# shellcheck disable=SC2086  # word splitting of $dirs is meant
tar -cf - --exclude=__pycache__ pyproject.toml README.md $dirs | tar -xf - -C "$work/src"

$python -m venv "$venv"
"$venv/bin/python" -m pip wheel -q --no-deps -w "$work/wheel" "$work/src"
"$venv/bin/python" -m pip install -q --no-compile "$work/wheel"/atlantic-*.whl
# Nobody should pip install into a root daemon's venv: pip and setuptools go (15 MB).
"$venv/bin/python" -m pip uninstall -q -y pip setuptools
# It imports (-I: the venv's atlantic, not the repository's ./atlantic beside us).
"$venv/bin/python" -I -B -m atlantic version >/dev/null

# relocate: the venv was built under $root; scripts and pyvenv.cfg name that path.
grep -rlF "$root" "$venv/bin" "$venv/pyvenv.cfg" | xargs -r sed -i "s|$root||g"
rm -f "$venv"/lib/python*/site-packages/atlantic-*.dist-info/direct_url.json  # names $work
# Compiled now, with the final paths, so that root never writes byte code into /opt
# (litter that dpkg would not remove) and tracebacks name the installed files.
$python -m compileall -q -j0 -s "$root" -p / "$venv/lib" >/dev/null
if leftover=$(grep -rlF "$work" "$root"); then
    echo "build-deb: the build directory is still named in: $leftover" >&2
    exit 1
fi

mkdir -p "$root/usr/bin" "$root/DEBIAN"
ln -s /opt/atlantic/venv/bin/atlantic "$root/usr/bin/atlantic"
install -D -m 0644 packaging/atlantic.service "$root/lib/systemd/system/atlantic.service"
install -D -m 0644 packaging/atlantic-killswitch.service "$root/lib/systemd/system/atlantic-killswitch.service"
install -D -m 0644 packaging/deb/atlantic.toml "$root/etc/atlantic/atlantic.toml"
install -D -m 0644 packaging/deb/copyright "$root/usr/share/doc/atlantic/copyright"
install -D -m 0644 README.md "$root/usr/share/doc/atlantic/README.md"  # the units' Documentation=
install -D -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/atlantic"
# A native package (no Debian revision): its changelog is changelog.gz.
printf 'atlantic (%s) unstable; urgency=medium\n\n  * Built by packaging/build-deb.sh.\n\n -- %s  %s\n' \
    "$version" "Atlantic developers <atlantic@example.invalid>" "$(date -R)" \
    | gzip -9n > "$root/usr/share/doc/atlantic/changelog.gz"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/atlantic/atlantic.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<EOF
Package: atlantic
Version: $version
Architecture: $arch
Maintainer: Atlantic developers <atlantic@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: python$pyver, libc6, nftables, adduser
Section: net
Priority: optional
Description: system-wide proxy client over warm pooled connections
 Atlantic routes the whole machine through an upstream HTTP(S) proxy, or
 directly, with no proxy setting in any application: a TUN device captures
 every flow, a userspace forwarder carries it over a shared pool of warm
 HTTP/1.1 and HTTP/2 connections. DNS, IPv6, QUIC and a crashed daemon never
 leak: an nftables kill switch stays until \`atlantic down\`. Runs as the
 systemd service atlantic.service; atlantic-killswitch.service (disabled
 unless enabled) seals the machine from boot until the proxy is up.
EOF
# Whatever the umask: directories 0755, files readable, nothing group- or other-writable.
chmod -R u+rwX,go+rX,go-w "$root"

mkdir -p "$out"
deb=$out/atlantic_${version}_${arch}.deb
dpkg-deb -Z"$compress" --build --root-owner-group "$root" "$deb" >/dev/null
if command -v lintian >/dev/null; then
    lintian --no-tag-display-limit "$deb" || true  # a report, not a gate
fi
echo "build-deb: $deb ($(du -h "$deb" | cut -f1), $(du -sh --exclude=DEBIAN "$root" | cut -f1) installed)"
