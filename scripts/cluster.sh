#!/usr/bin/env bash
# A three-node RabbitMQ cluster of the project's own on loopback, for the cluster tests.
# It runs beside the machine's RabbitMQ (5672), which it never stops or reconfigures:
# its nodes have their own names (gwc1..3@localhost), ports, data directories, Erlang
# cookie and config files, and it signals only the pids in its own pid files.
#
#   cluster.sh start            fresh cluster: 3 nodes joined, vhost $VHOST, quorum queue(s)
#   cluster.sh stop             stop every node (kill -9 what does not stop) and remove the data
#   cluster.sh kill N           kill -9 node N (by its pid file)
#   cluster.sh pause N | resume N   SIGSTOP / SIGCONT node N
#   cluster.sh revive N         start node N again; it rejoins the cluster
#   cluster.sh stop-node N      stop node N cleanly
#   cluster.sh leader QUEUE     the number of the node leading QUEUE
#   cluster.sh ctl N ARGS...    rabbitmqctl against node N
#   cluster.sh ports            the AMQP ports, one per line
#
# Environment: CLUSTER_DIR (default /var/tmp/amqp-gateway-cluster), CLUSTER_PORT_BASE
# (default 5800: AMQP on 5801..5803, distribution on 25801..25803), CLUSTER_VHOST
# (default gw-cluster), CLUSTER_QUEUES (quorum queues to declare, default "gw.quorum").
set -euo pipefail

DIR=${CLUSTER_DIR:-/var/tmp/amqp-gateway-cluster}
PORT_BASE=${CLUSTER_PORT_BASE:-5800}
VHOST=${CLUSTER_VHOST:-gw-cluster}
QUEUES=${CLUSTER_QUEUES:-gw.quorum}
BIN=/usr/lib/rabbitmq/bin
NODES="1 2 3"

fail() { echo "cluster: $*" >&2; exit 1; }
node() { echo "gwc$1@localhost"; }
amqp_port() { echo $((PORT_BASE + $1)); }
pid_of() { cat "$DIR/n$1/pid" 2>/dev/null || true; }

# Every rabbitmq command runs as this user with this HOME (the cookie) and these files:
# nothing is read from /etc/rabbitmq or the rabbitmq user's home.
node_env() {
    local n=$1
    export HOME=$DIR
    export RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(node "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT=$(amqp_port "$n")
    export RABBITMQ_DIST_PORT=$((20000 + PORT_BASE + n))
    export RABBITMQ_CONFIG_FILE=$DIR/n$n/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/n$n/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/n$n/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$DIR/n$n/mnesia
    export RABBITMQ_LOG_BASE=$DIR/n$n/log
    export RABBITMQ_PID_FILE=$DIR/n$n/pid
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { local n=$1; shift; (node_env "$n"; timeout "${CTL_TIMEOUT:-120}" "$BIN/rabbitmqctl" -n "$(node "$n")" "$@"); }

ensure_installed() {
    [ -x "$BIN/rabbitmq-server" ] && return
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || fail "RabbitMQ is not installed (needs root and apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    # The package starts its own service on 5672 where systemd runs; that one is not ours to touch.
}

write_files() {
    mkdir -p "$DIR"
    [ -f "$DIR/.erlang.cookie" ] || { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/.erlang.cookie"; }
    chmod 400 "$DIR/.erlang.cookie"
    : > "$DIR/rabbitmq-env.conf"
    for n in $NODES; do
        mkdir -p "$DIR/n$n/log" "$DIR/n$n/mnesia"
        cat > "$DIR/n$n/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
# Small, like the tests: no node of this cluster may eat the machine.
vm_memory_high_watermark.absolute = 512MB
disk_free_limit.absolute = 50MB
EOF
        echo "[]." > "$DIR/n$n/advanced.config"
        echo "[]." > "$DIR/n$n/enabled_plugins"
    done
}

start_node() {
    local n=$1
    (node_env "$n"; "$BIN/rabbitmq-server" -detached >"$DIR/n$n/log/startup.log" 2>&1)
    local waited=0
    until [ -s "$DIR/n$n/pid" ]; do
        sleep 0.2; waited=$((waited + 1))
        [ $waited -lt 300 ] || fail "node $n wrote no pid file in 60 s (log: $DIR/n$n/log)"
    done
    ctl "$n" wait --timeout 90 "$DIR/n$n/pid" >/dev/null || fail "node $n did not start (log: $DIR/n$n/log)"
}

declare_queues() {
    local python=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
    [ -x "$python" ] || fail "declaring the quorum queues needs the project's venv (make venv) or PYTHON=..."
    "$python" - "$(amqp_port 1)" "$VHOST" $QUEUES <<'EOF'
import sys

import pika

port, vhost, *queues = sys.argv[1:]
params = pika.ConnectionParameters("127.0.0.1", int(port), vhost, pika.PlainCredentials("guest", "guest"))
with pika.BlockingConnection(params) as connection:
    channel = connection.channel()
    for queue in queues:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
EOF
}

start() {
    ensure_installed
    stop_all
    write_files
    for n in $NODES; do start_node "$n" & done
    wait
    for n in 2 3; do
        ctl "$n" stop_app >/dev/null
        ctl "$n" join_cluster "$(node 1)" >/dev/null
        ctl "$n" start_app >/dev/null
    done
    ctl 1 add_vhost "$VHOST" >/dev/null
    ctl 1 set_permissions -p "$VHOST" guest ".*" ".*" ".*" >/dev/null
    declare_queues
    for q in $QUEUES; do
        members=$(ctl 1 list_queues -p "$VHOST" --quiet --no-table-headers name members | awk -v q="$q" '$1 == q')
        for n in $NODES; do
            case "$members" in *"$(node "$n")"*) ;; *) fail "queue $q has no replica on node $n: $members" ;; esac
        done
    done
    echo "cluster: up on ports $(amqp_port 1) $(amqp_port 2) $(amqp_port 3), vhost $VHOST, quorum queues: $QUEUES" >&2
}

signal_node() {
    local sig=$1 n=$2 pid
    pid=$(pid_of "$n")
    [ -n "$pid" ] || fail "node $n has no pid file"
    kill "-$sig" "$pid"
}

kill_node() {
    local n=$1 pid
    pid=$(pid_of "$n")
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null || true  # a paused node cannot die of SIGKILL any slower, but be sure
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$DIR/n$n/pid"
}

stop_node() {
    local n=$1 pid
    pid=$(pid_of "$n")
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null || true
    CTL_TIMEOUT=30 ctl "$n" stop >/dev/null 2>&1 || true
    kill_node "$n"
}

stop_all() {
    [ -d "$DIR" ] || return 0
    for n in $NODES; do stop_node "$n" & done
    wait
    rm -rf "$DIR"
}

leader() {
    local q=$1 n
    for n in $NODES; do
        if [ -n "$(pid_of "$n")" ] && out=$(ctl "$n" list_queues -p "$VHOST" --quiet --no-table-headers name leader 2>/dev/null); then
            leader=$(awk -v q="$q" '$1 == q {print $2}' <<<"$out")
            for m in $NODES; do [ "$leader" = "$(node "$m")" ] && { echo "$m"; return; }; done
        fi
    done
    fail "no leader found for $q"
}

case "${1:-}" in
    start) start ;;
    stop) stop_all ;;
    kill) kill_node "$2" ;;
    pause) signal_node STOP "$2" ;;
    resume) signal_node CONT "$2" ;;
    revive) start_node "$2" ;;
    stop-node) stop_node "$2" ;;
    leader) leader "$2" ;;
    ctl) n=$2; shift 2; ctl "$n" "$@" ;;
    ports) for n in $NODES; do amqp_port "$n"; done ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
