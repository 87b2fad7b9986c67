#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres without password) and RabbitMQ
# (127.0.0.1:5672, guest/guest) are up for the tests and for running Conveyor without Docker.
# Starts them when installed but stopped; installs them with apt-get (Debian/Ubuntu) when missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for() { # name, check, seconds
  local name=$1 check=$2 secs=$3
  for _ in $(seq "$secs"); do
    if $check; then echo "$name is up"; return 0; fi
    sleep 1
  done
  echo "ERROR: $name did not come up within ${secs}s" >&2
  return 1
}

installed_pg=0
if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing PostgreSQL with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    installed_pg=1
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ "$installed_pg" = 1 ]; then
    # A fresh cluster asks for passwords on TCP; the tests connect as postgres without one.
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_up 30
else
  echo "PostgreSQL is up"
fi

if ! amqp_up; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing RabbitMQ with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  $SUDO rabbitmq-server -detached || true
  wait_for RabbitMQ amqp_up 90
else
  echo "RabbitMQ is up"
fi

# The management plugin answers the unacked counts of GET /v1/queues (and serves the UI on
# 15672); enabling it is idempotent and takes effect without a restart.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  $SUDO rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 || \
    echo "warning: could not enable rabbitmq_management; unacked counts will be null" >&2
fi
