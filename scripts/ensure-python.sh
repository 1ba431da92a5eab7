#!/usr/bin/env bash
# Print a Python >= 3.11 that can make virtualenvs; on Debian as root, install one if missing.
set -euo pipefail
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && \
        "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        command -v "$candidate"
        exit 0
    fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-python: installing python3 and python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev >/dev/null
    command -v python3
    exit 0
fi
echo "ensure-python: need Python 3.11+ with venv (set PYTHON=/path/to/python3.11)" >&2
exit 1
