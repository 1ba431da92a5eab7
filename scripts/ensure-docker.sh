#!/usr/bin/env bash
# A Docker engine for make image-test.
#   ensure-docker.sh start   print the DOCKER_HOST to use; if no engine answers, install
#                            Debian's docker.io (as root) and start a dockerd of the
#                            project's own (own data root, exec root, socket, pidfile),
#                            printing "started" on a second line
#   ensure-docker.sh stop    stop that dockerd (never one the project did not start)
# Our dockerd makes no bridge and touches no iptables: containers use the host's network.
set -euo pipefail

NAME=amqp-gateway-docker
DATA_ROOT=/var/lib/$NAME
EXEC_ROOT=/run/$NAME
SOCKET=/run/$NAME.sock
PIDFILE=/run/$NAME.pid
LOG=/var/log/$NAME.log

fail() { echo "ensure-docker: $*" >&2; exit 1; }
answers() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
    if command -v docker >/dev/null 2>&1; then
        for host in "${DOCKER_HOST:-}" unix:///var/run/docker.sock "unix://$SOCKET"; do
            if [ -n "$host" ] && answers "$host"; then echo "$host"; return; fi
        done
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || \
            fail "no Docker engine answers and none can be installed here (installing docker.io needs root and apt-get)"
        echo "ensure-docker: installing docker.io" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    [ "$(id -u)" = 0 ] || fail "no Docker engine answers, and starting dockerd needs root"
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
    dockerd --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --host "unix://$SOCKET" \
        --pidfile "$PIDFILE" --bridge=none --iptables=false --ip6tables=false >"$LOG" 2>&1 &
    for _ in $(seq 1 120); do
        if answers "unix://$SOCKET"; then echo "unix://$SOCKET"; echo started; return; fi
        sleep 0.5
    done
    fail "dockerd did not answer on $SOCKET within 60 s (its log: $LOG)"
}

stop() {
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    fail "dockerd ($pid) did not stop within 30 s"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) fail "usage: $0 start|stop" ;;
esac
