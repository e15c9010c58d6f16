#!/bin/sh
# Puts Prometheus's tools at the paths given, each named by its file name: `promtool` (the
# config and rule checker) and `prometheus` (the server, which tests/deploy/ runs against the
# test stack on a loopback port of its own); both are used by tests/deploy/.
#
#   sh deploy/tools/install-promtool.sh .venv/bin/promtool .venv/bin/prometheus
#
# A tool already on PATH is linked; the others are extracted from Debian's `prometheus` package
# (`apt-get download`, no install: nothing is set up as a service or started, and no root is
# needed unless apt has no package lists yet, when root runs `apt-get update` first). Without
# apt-get (not Debian) it says so and exits 0: the tests that need them are then skipped.
set -eu
[ $# -gt 0 ] || { echo "usage: $0 DEST/promtool [DEST/prometheus]" >&2; exit 2; }

missing=""
for dest in "$@"; do
    name=$(basename "$dest")
    case $name in
        promtool | prometheus) ;;
        *) echo "install-promtool: cannot install '$name' (promtool or prometheus)" >&2; exit 2 ;;
    esac
    dest=$(cd "$(dirname "$dest")" && pwd)/$name
    if existing=$(command -v "$name" 2>/dev/null) && [ "$existing" != "$dest" ]; then
        ln -sf "$existing" "$dest"
    else
        missing="$missing $dest"
    fi
done
[ -n "$missing" ] || exit 0

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "install-promtool: no apt-get/dpkg-deb here; install Prometheus (promtool and the" \
        "prometheus server) on PATH to run the rule tests and the live Prometheus test" \
        "(they are skipped without it)" >&2
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
            "as root, or install Prometheus on PATH" >&2
        exit 1
    fi
fi
dpkg-deb -x prometheus_*.deb extracted
for dest in $missing; do
    install -m 0755 "extracted/usr/bin/$(basename "$dest")" "$dest"
    "$dest" --version | head -n 1
done
