#!/usr/bin/env bash
# The quickstart: an in-process Kafka cluster (librdkafka's mock cluster) and the in-memory store;
# no services needed. Installs the build prerequisites first when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
# librdkafka is built from source: cmake, the OpenSSL headers, and the curl headers (its source
# includes <curl/curl.h> even though it is built without curl support; see scripts/services.sh).
packages=(cmake libssl-dev libcurl4-openssl-dev)
if ! command -v cmake >/dev/null || ! dpkg -s libssl-dev libcurl4-openssl-dev >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "librdkafka needs cmake and the OpenSSL and curl headers: sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
fi
exec cargo run --release --example quickstart
