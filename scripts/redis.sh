#!/usr/bin/env bash
# Debian's redis-server for the GCS fault-tolerance test (tests/cluster/test_ray_gcs.py starts its own private
# server from it, on a free port, and stops it). Installs the package if missing and prints the binary's path
# on stdout (everything else goes to stderr). Idempotent.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq redis-server >&2
fi
command -v redis-server
