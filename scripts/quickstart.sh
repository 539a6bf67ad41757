#!/usr/bin/env bash
# The quickstart: an in-process Kafka cluster (librdkafka's mock cluster) and the in-memory store;
# no services needed. Installs the build prerequisites first when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! dpkg -s libssl-dev >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake libssl-dev >/dev/null
  else
    echo "librdkafka needs cmake and the OpenSSL headers: sudo apt-get install -y cmake libssl-dev" >&2
    exit 1
  fi
fi
exec cargo run --release --example quickstart
