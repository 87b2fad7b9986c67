#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres without password) and RabbitMQ
# (127.0.0.1:5672, guest/guest) are up for the tests and for running Conveyor without Docker.
# Starts them when installed but stopped; installs them with apt-get (Debian/Ubuntu) when missing.
#
# Both also speak TLS, for api/tests/tls.rs: Postgres with `ssl = on` (Debian's snakeoil
# certificate) and RabbitMQ on 5671 with a certificate for localhost and 127.0.0.1 signed by a
# local CA, whose certificate the tests trust: $AMQP_TLS_DIR/ca.pem.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
amqps_up() { (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null; }

# Where the RabbitMQ TLS files live; tests read ca.pem from here (CONVEYOR_TEST_AMQP_CA overrides).
AMQP_TLS_DIR=/etc/rabbitmq/conveyor-tls
RABBITMQ_CONF=/etc/rabbitmq/rabbitmq.conf

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

# Postgres TLS: Debian's clusters have `ssl = on` with the snakeoil certificate; turn it on
# where it is off. `ssl` takes effect on reload, so open sessions are not disturbed.
pg_sql() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc "$1"; }
if command -v psql >/dev/null 2>&1 && [ "$(pg_sql 'show ssl')" != "on" ]; then
  cert=$(pg_sql 'show ssl_cert_file')
  if [ ! -r "$cert" ] && [ "$cert" = /etc/ssl/certs/ssl-cert-snakeoil.pem ]; then
    $SUDO make-ssl-cert generate-default-snakeoil --force-overwrite
  fi
  pg_sql 'ALTER SYSTEM SET ssl = on' >/dev/null
  pg_sql 'SELECT pg_reload_conf()' >/dev/null
  sleep 1
  if [ "$(pg_sql 'show ssl')" != "on" ]; then
    echo "ERROR: could not turn on ssl in PostgreSQL (see its log; ssl_cert_file=$cert)" >&2
    exit 1
  fi
  echo "PostgreSQL TLS turned on"
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if amqp_up; then
    echo "warning: RabbitMQ runs elsewhere (no rabbitmq-server here); cannot set up its TLS listener" >&2
  else
    echo "installing RabbitMQ with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi
fi

# RabbitMQ TLS: a local CA and a server certificate it signs, made once (again when the server
# certificate expires within 30 days), and a listener on 5671 in a marked block of rabbitmq.conf.
# Returns 0 when something changed, so that the running broker must pick it up.
configure_rabbitmq_tls() {
  local changed=1
  $SUDO mkdir -p "$AMQP_TLS_DIR"
  if [ ! -s "$AMQP_TLS_DIR/ca.pem" ] || [ ! -s "$AMQP_TLS_DIR/server.pem" ] || \
     ! openssl x509 -checkend 2592000 -noout -in "$AMQP_TLS_DIR/server.pem" >/dev/null 2>&1; then
    local tmp
    tmp=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=Conveyor local test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" > "$tmp/ext"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
      -CAcreateserial -days 825 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null
    $SUDO install -m 0644 "$tmp/ca.pem" "$tmp/server.pem" "$AMQP_TLS_DIR/"
    # Only RabbitMQ (and root) may read the keys.
    $SUDO install -m 0640 -g rabbitmq "$tmp/server.key" "$AMQP_TLS_DIR/"
    $SUDO install -m 0600 "$tmp/ca.key" "$AMQP_TLS_DIR/"
    rm -rf "$tmp"
    echo "RabbitMQ TLS certificates written to $AMQP_TLS_DIR"
    changed=0
  fi
  local block
  block=$(cat <<CONF
# conveyor-tls begin (written by scripts/ensure-services.sh)
listeners.ssl.default = 5671
ssl_options.cacertfile = $AMQP_TLS_DIR/ca.pem
ssl_options.certfile = $AMQP_TLS_DIR/server.pem
ssl_options.keyfile = $AMQP_TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
# conveyor-tls end
CONF
)
  local current=""
  if [ -f "$RABBITMQ_CONF" ]; then
    current=$(sed -n '/^# conveyor-tls begin/,/^# conveyor-tls end/p' "$RABBITMQ_CONF")
  fi
  if [ "$current" != "$block" ]; then
    local rest=""
    if [ -f "$RABBITMQ_CONF" ]; then
      rest=$(sed '/^# conveyor-tls begin/,/^# conveyor-tls end/d' "$RABBITMQ_CONF")
    fi
    { if [ -n "$rest" ]; then printf '%s\n' "$rest"; fi; printf '%s\n' "$block"; } |
      $SUDO tee "$RABBITMQ_CONF.conveyor-new" >/dev/null
    $SUDO mv "$RABBITMQ_CONF.conveyor-new" "$RABBITMQ_CONF"
    echo "RabbitMQ TLS listener configured in $RABBITMQ_CONF"
    changed=0
  fi
  return $changed
}

# Starts the listener of rabbitmq.conf's TLS block in the running node, so that connections
# of tests running elsewhere survive; rabbitmq.conf keeps it for the next boot. New
# certificates for a listener already running need the restart below instead.
start_tls_listener_live() {
  $SUDO rabbitmqctl eval "
    application:set_env(rabbit, ssl_options, [
      {cacertfile, \"$AMQP_TLS_DIR/ca.pem\"}, {certfile, \"$AMQP_TLS_DIR/server.pem\"},
      {keyfile, \"$AMQP_TLS_DIR/server.key\"}, {verify, verify_none},
      {fail_if_no_peer_cert, false}]),
    rabbit_networking:start_ssl_listener(5671, rabbit_networking:ensure_ssl(), 10, 1)." \
    >/dev/null 2>&1 || return 1
  for _ in $(seq 10); do amqps_up && return 0; sleep 1; done
  return 1
}

tls_changed=0
if command -v rabbitmq-server >/dev/null 2>&1 && configure_rabbitmq_tls; then tls_changed=1; fi

if ! amqp_up; then
  $SUDO rabbitmq-server -detached || true
  wait_for RabbitMQ amqp_up 90
else
  echo "RabbitMQ is up"
  if command -v rabbitmq-server >/dev/null 2>&1 && ! amqps_up && start_tls_listener_live; then
    echo "RabbitMQ TLS listener started without a restart"
  elif command -v rabbitmq-server >/dev/null 2>&1 && { [ "$tls_changed" = 1 ] || ! amqps_up; }; then
    # rabbitmq.conf is read at boot only: restart to load the TLS listener.
    echo "restarting RabbitMQ to load its TLS configuration"
    $SUDO rabbitmqctl stop >/dev/null
    for _ in $(seq 30); do amqp_up || break; sleep 1; done
    $SUDO rabbitmq-server -detached
    wait_for RabbitMQ amqp_up 90
  fi
fi
if command -v rabbitmq-server >/dev/null 2>&1; then
  $SUDO rabbitmqctl await_startup --timeout 60 >/dev/null
  wait_for "RabbitMQ TLS (5671)" amqps_up 30
fi

# The management plugin answers the unacked counts of GET /v1/queues (and serves the UI on
# 15672); enabling it is idempotent and takes effect without a restart.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  $SUDO rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 || \
    echo "warning: could not enable rabbitmq_management; unacked counts will be null" >&2
fi
