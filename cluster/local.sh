#!/usr/bin/env bash
# A development Ray head on this machine, loopback only, token authentication on.
#
#   cluster/local.sh start [--cpus N] [--port P] [--dashboard-port D]   start the head, print how to submit
#   cluster/local.sh stop                                               stop what `start` started (nothing else)
#   cluster/local.sh status
#   cluster/local.sh submit -- python jobs/infer.py --input ... --output ...   ray job submit with the token
#
# Loopback only: on Linux, Ray binds the GCS, raylet and workers to the node IP, and picks the machine's
# outside address even when given --node-ip-address=127.0.0.1. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is
# Ray's supported single-machine mode: the node IP becomes 127.0.0.1 and every server binds to it
# (tests/test_cluster.py lists the listening sockets to prove it). The dashboard and job API listen
# on 127.0.0.1 too. The price: no other node can join this head (use cluster/README.md for clusters).
#
# Token authentication: RAY_AUTH_MODE=token; the token lives in $CARRAY_RAY_DIR/auth_token (made on
# the first start, mode 600) and clients pass it with RAY_AUTH_TOKEN_PATH (`submit` does it for you).
# `stop` kills the processes of this head only: `ray stop` would kill every Ray on the machine.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
RAY="${RAY:-$here/.venv/bin/ray}"
[ -x "$RAY" ] || RAY="$(command -v ray)"
STATE="${CARRAY_RAY_DIR:-$here/.ray-local}"     # pid file, token, temp dir of this head
PORT="${CARRAY_RAY_PORT:-6380}"
DASHBOARD_PORT="${CARRAY_DASHBOARD_PORT:-8266}"
CPUS=""

# Jobs run `python ...` with the head's PATH: make that the project's interpreter.
[ -d "$here/.venv/bin" ] && export PATH="$here/.venv/bin:$PATH"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

usage() { sed -n '2,8p' "$0"; exit 2; }

start() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --cpus) CPUS="$2"; shift 2 ;;
      --port) PORT="$2"; shift 2 ;;
      --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  if [ -f "$STATE/head.pgid" ] && kill -0 -- "-$(cat "$STATE/head.pgid")" 2>/dev/null; then
    echo "a head is already running (pgid $(cat "$STATE/head.pgid")); cluster/local.sh stop first" >&2; exit 1
  fi
  mkdir -p "$STATE/tmp"
  chmod 700 "$STATE"
  if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")
  fi
  # Its own process group, so that `stop` can end exactly these processes.
  # Every port derives from --port, so two heads (or a head and a test's Ray) never collide.
  setsid "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port=$((PORT + 1)) --dashboard-agent-listen-port=$((PORT + 2)) \
    --dashboard-agent-grpc-port=$((PORT + 3)) --metrics-export-port=$((PORT + 4)) \
    --runtime-env-agent-port=$((PORT + 5)) \
    --temp-dir="$STATE/tmp" ${CPUS:+--num-cpus="$CPUS"} --disable-usage-stats \
    --system-config='{"idle_worker_killing_time_threshold_ms":60000}' \
    > "$STATE/start.log" 2>&1 &
  local launcher=$!
  echo "$launcher" > "$STATE/head.pgid"
  wait "$launcher" || { cat "$STATE/start.log" >&2; exit 1; }
  # Plain printf, no heredoc: a backtick in an unquoted heredoc runs as a command.
  printf '%s\n' \
    "Ray head running on 127.0.0.1:$PORT (loopback only, token auth on); dashboard http://127.0.0.1:$DASHBOARD_PORT" \
    "Clients need the token:" \
    "  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH" \
    "Submit a job:" \
    "  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH $RAY job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir $here -- python jobs/infer.py --input INPUT --output OUTPUT" \
    "  (or: cluster/local.sh submit -- python jobs/infer.py --input INPUT --output OUTPUT)" \
    "Stop it: cluster/local.sh stop"
}

stop() {
  [ -f "$STATE/head.pgid" ] || { echo "no head started by this script"; return 0; }
  local pgid; pgid="$(cat "$STATE/head.pgid")"
  kill -TERM -- "-$pgid" 2>/dev/null || true
  # The raylet and its workers end on TERM within a second; the GCS server, the autoscaler's monitor
  # and the runtime-env agent outlived it by more than 10 s (Ray 2.60) and hold nothing to save on a
  # single head: 3 s, then KILL.
  for _ in $(seq 1 15); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  rm -f "$STATE/head.pgid"
  echo "stopped the head (process group $pgid)"
}

status() {
  if [ -f "$STATE/head.pgid" ] && kill -0 -- "-$(cat "$STATE/head.pgid")" 2>/dev/null; then
    "$RAY" status --address "127.0.0.1:$PORT"
  else
    echo "not running"; exit 1
  fi
}

submit() {
  [ "${1:-}" = "--" ] && shift
  exec "$RAY" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" --working-dir "$here" -- "$@"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  submit) submit "$@" ;;
  *) usage ;;
esac
