#!/usr/bin/env bash
# Debian packages pmni needs beside PyPI: libusb for open3d (imported by ns-export), jemalloc for faster CPU
# training (optional), chromium for the viewer test (tests/test_viewer.py drives it headless through playwright).
# Quiet and quick when already present; only a hint when we cannot install as root.
set -euo pipefail
pkgs=(libusb-1.0-0 libjemalloc2 chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "note: please install these Debian packages: ${missing[*]} (ns-export needs libusb-1.0-0)" >&2
fi
