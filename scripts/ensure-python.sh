#!/usr/bin/env bash
# Print a Python >= 3.11 that can make virtualenvs and build a C extension
# (gunicorn-h1c ships as source); on Debian as root, install what is missing.
set -euo pipefail

apt_install() {
    echo "ensure-python: installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && \
        "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$(command -v "$candidate")
        break
    fi
done
if [ -z "$python" ]; then
    if ! can_install; then
        echo "ensure-python: need Python 3.11+ with venv (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    apt_install python3 python3-venv python3-dev
    python=$(command -v python3)
fi

# A compiler and Python.h, for the one dependency built from source.
has_headers() {
    "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
if ! command -v cc >/dev/null 2>&1 || ! has_headers; then
    if can_install; then
        apt_install gcc libc6-dev python3-dev
    fi
    if ! command -v cc >/dev/null 2>&1 || ! has_headers; then
        echo "ensure-python: need a C compiler and the Python headers for $python (gunicorn-h1c builds from source)" >&2
        exit 1
    fi
fi
echo "$python"
