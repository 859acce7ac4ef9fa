#!/usr/bin/env bash
# Debian packages pmni needs beside PyPI. Required: libusb for open3d (imported by ns-export). Optional: jemalloc
# (faster CPU training) and chromium (tests/test_viewer.py drives it headless; the test skips without it).
# Quick when already present; only a hint when we cannot install as root. A line per step (the Makefile's install
# shows progress; apt's own output is kept quiet).
set -uo pipefail
required=(libusb-1.0-0)
optional=(libjemalloc2 chromium)
missing() { for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done; }
need=($(missing "${required[@]}"))
want=($(missing "${optional[@]}"))
[ ${#need[@]} -eq 0 ] && [ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: please install these Debian packages: ${need[*]} ${want[*]} (ns-export needs libusb-1.0-0)" >&2
    exit 0
fi
echo "missing Debian packages: ${need[*]} ${want[*]}; updating the package lists (apt-get update)"
apt-get update -qq >/dev/null || true
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get install -y -qq "${need[@]}" >/dev/null || { echo "error: could not install ${need[*]}" >&2; exit 1; }
fi
for p in "${want[@]}"; do
    echo "installing optional Debian package: $p"
    apt-get install -y -qq "$p" >/dev/null || echo "warning: could not install $p (optional)" >&2
done
