#!/usr/bin/env bash
# Make sure RabbitMQ (and, with "postgres", PostgreSQL) answer on loopback; "haproxy" installs HAProxy.
# Missing on Debian as root: install from the distribution and start them.
# Elsewhere: say exactly what to start, and fail.
#   scripts/ensure-services.sh rabbitmq postgres
set -euo pipefail

AMQP_PORT=${AMQP_PORT:-5672}
PG_PORT=${PG_PORT:-5432}
say() { echo "ensure-services: $*" >&2; }

port_open() {  # port_open PORT: something listens on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_port() {  # wait_port NAME PORT SECONDS
    local i
    for ((i = 0; i < $3 * 2; i++)); do
        port_open "$2" && return 0
        sleep 0.5
    done
    say "$1 did not open port $2 within $3 s"
    return 1
}

can_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

apt_install() {
    say "installing $* from the distribution's packages"
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
    port_open "$AMQP_PORT" && return 0
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if can_install; then
            apt_install rabbitmq-server
        else
            say "RabbitMQ is not running on 127.0.0.1:$AMQP_PORT and I cannot install it here."
            say "Install and start it (e.g. 'apt-get install rabbitmq-server && rabbitmq-server -detached'), then retry."
            return 1
        fi
    fi
    port_open "$AMQP_PORT" && return 0  # the package's own service may have started it
    if [ "$(id -u)" = 0 ] || [ -w /var/lib/rabbitmq ]; then
        say "starting RabbitMQ (rabbitmq-server -detached)"
        rabbitmq-server -detached >/dev/null 2>&1 || true
        wait_port RabbitMQ "$AMQP_PORT" 90
        rabbitmqctl await_startup >/dev/null 2>&1 || true
    else
        say "RabbitMQ is installed but not running: start it with 'sudo rabbitmq-server -detached'."
        return 1
    fi
}

pg_latest() {  # pg_latest DIR: the highest PostgreSQL version directory in DIR, or nothing
    ls "$1" 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {  # run a command as the postgres OS user, from a directory it can read
    (cd / && runuser -u postgres -- "$@")
}

ensure_postgres() {
    if ! port_open "$PG_PORT"; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            if can_install; then
                apt_install postgresql
            else
                say "PostgreSQL is not running on 127.0.0.1:$PG_PORT and I cannot install it here."
                say "Install and start it (e.g. 'apt-get install postgresql && pg_ctlcluster <version> main start')."
                return 1
            fi
        fi
        # The package's own service may have started it (not in containers without an init system).
        if ! port_open "$PG_PORT"; then
            if [ "$(id -u)" != 0 ]; then
                say "PostgreSQL is installed but not running: start it with 'sudo pg_ctlcluster <version> main start'."
                return 1
            fi
            local version
            version=$(pg_latest /etc/postgresql)
            if [ -z "$version" ]; then
                # Installed without a cluster (create_main_cluster=false, or removed): make one.
                version=$(pg_latest /usr/lib/postgresql)
                if [ -z "$version" ]; then
                    say "no PostgreSQL server found under /usr/lib/postgresql; install the postgresql package"
                    return 1
                fi
                say "creating the PostgreSQL $version cluster 'main' on port $PG_PORT"
                pg_createcluster --port "$PG_PORT" "$version" main >/dev/null
            fi
            say "starting PostgreSQL $version (pg_ctlcluster $version main start)"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
                || pg_ctlcluster "$version" main start
            wait_port PostgreSQL "$PG_PORT" 60
        fi
    fi
    # The tests log in over TCP as the superuser postgres, password postgres, to
    # create a database and a role of their own. A fresh Debian cluster asks
    # for a password on 127.0.0.1 (scram-sha-256) and postgres has none: root sets it.
    if ! command -v psql >/dev/null 2>&1; then
        if can_install; then
            apt_install postgresql-client
        else
            say "psql is missing: cannot check the test login (install postgresql-client)."
            return 1
        fi
    fi
    if ! PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
            -Atqc 'select 1' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1 && id postgres >/dev/null 2>&1; then
            say "setting the postgres user's password for the tests"
            as_postgres psql -p "$PG_PORT" -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
            PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
                -Atqc 'select 1' >/dev/null || {
                say "still cannot log in as postgres/postgres on 127.0.0.1:$PG_PORT: check pg_hba.conf"
                return 1
            }
        else
            say "cannot log in to PostgreSQL as postgres/postgres on 127.0.0.1:$PG_PORT; set that password or trust auth."
            return 1
        fi
    fi
}

ensure_haproxy() {  # installed only: the cluster tests run HAProxy processes of their own
    command -v haproxy >/dev/null 2>&1 && return 0
    if can_install; then
        apt_install haproxy
    else
        say "HAProxy is missing and I cannot install it here (apt-get install haproxy)."
        return 1
    fi
}

[ $# -gt 0 ] || set -- rabbitmq
for service in "$@"; do
    case "$service" in
        rabbitmq) ensure_rabbitmq ;;
        postgres) ensure_postgres ;;
        haproxy) ensure_haproxy ;;
        *) say "unknown service $service"; exit 2 ;;
    esac
done
