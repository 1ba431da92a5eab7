#!/usr/bin/env bash
# Build, once, a local stand-in for the Dockerfile's base image (python:3.11-slim),
# for machines that reach no image registry: a debootstrap Debian bookworm minbase with
# Python 3.11 and venv, plus this host's extra CA certificates (so that pip inside a build
# trusts what this host trusts). The Debian mirror is the one this machine's apt uses.
#   DOCKER_HOST=... standin-base.sh [TAG]    prints the tag; skips the build if it exists
set -euo pipefail

TAG=${1:-amqp-gateway-base:bookworm}
fail() { echo "standin-base: $*" >&2; exit 1; }

if docker image inspect "$TAG" >/dev/null 2>&1; then echo "$TAG"; exit 0; fi
[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "debootstrap is missing and apt-get is not here to install it"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# The first Debian mirror apt is configured with (deb822 .sources or one-line lists).
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}')
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
             | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')
fi
[ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt/sources.list*"

root=$(mktemp -d /var/tmp/standin-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "standin-base: debootstrap bookworm from the apt mirror into $root (a few minutes, once)" >&2
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,libpython3.11-dev,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "$TAG"
