#!/bin/sh
# Puts promtool (Prometheus's config and rule checker, used by tests/deploy/) at $1.
#
# A promtool on PATH is linked; otherwise the binary is extracted from Debian's `prometheus`
# package (`apt-get download`, no install: no Prometheus server is set up or started, and no
# root is needed unless apt has no package lists yet, when root runs `apt-get update` first).
# Without apt-get (not Debian) it says so and exits 0: the tests that need it are then skipped.
set -eu
dest=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")

if existing=$(command -v promtool 2>/dev/null); then
    ln -sf "$existing" "$dest"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "install-promtool: no apt-get/dpkg-deb here; install Prometheus's promtool on PATH" \
        "to run the alert rule tests (they are skipped without it)" >&2
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# As root, apt would hand the download to its unprivileged _apt user, which cannot write here.
download() { apt-get download -qq -o APT::Sandbox::User=root prometheus; }
if ! download 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        download
    else
        echo "install-promtool: 'apt-get download prometheus' failed; run 'apt-get update'" \
            "as root, or install promtool on PATH" >&2
        exit 1
    fi
fi
dpkg-deb -x prometheus_*.deb extracted
install -m 0755 extracted/usr/bin/promtool "$dest"
"$dest" --version | head -n 1
