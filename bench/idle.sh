#!/usr/bin/env bash
# Idle TLS devices: what each connection that is open and silent costs the server, stg side
# by side with Kamailio (its tls module) in one run. For each count N, a fresh server on
# 127.0.0.1 gets N TLS connections from bench/idle-clients.py (spread over --sources
# loopback addresses 127.1.x.y; each sends one OPTIONS, reads the 200, then stays silent),
# and the growth of the server's memory (RSS and PSS, its whole process tree for Kamailio)
# and its open descriptors are read from /proc. Both use stg's self-signed P-256 certificate.
#
#   bench/idle.sh [--counts "10000 100000"] [--sources 1000] [--no-kamailio]
#
# Each N needs N + ~1,000 descriptors in the server: the script raises its own
# RLIMIT_NOFILE (hard and soft, as root) so that both servers inherit it, checks that stg
# raised its soft limit to the hard one by itself, and skips a count the limit cannot hold.
# The client runs one process per 15,000 connections. Needs python3, kamailio and
# kamailio-tls-modules (Debian 12: apt-get install -y python3 kamailio kamailio-tls-modules).
# A one-off measurement on a quiet machine; not part of CI. Stops only what it started, by
# PID.
set -euo pipefail
counts="10000 100000"; sources=1000; kamailio=1
while [ $# -gt 0 ]; do
  case $1 in
    --counts) counts=$2; shift 2 ;; --sources) sources=$2; shift 2 ;;
    --no-kamailio) kamailio=0; shift ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
work=$(mktemp -d /tmp/stg-bench-idle.XXXXXX)
tls_port=25065 admin_port=29065 kam_port=15065

max=0; for n in $counts; do [ "$n" -gt "$max" ] && max=$n; done
want=$((max + 2000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want" ]; then
  ulimit -Hn "$want" 2>/dev/null \
    || echo "NOTE cannot raise the hard open-file limit above $(ulimit -Hn) (no CAP_SYS_RESOURCE?)"
fi
ulimit -Sn "$(ulimit -Hn)"
hard=$(ulimit -Hn)
echo "open-file limit for the servers and the client: $hard"

server_pid="" client_pid=""
cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null && wait "$client_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  return 0
}
trap cleanup EXIT

# Is something listening on 127.0.0.1:PORT (TCP)? From /proc: a probe would be a client.
listening() {
  awk -v want="$(printf '0100007F:%04X' "$1")" '$2 == want && $4 == "0A" {f=1} END {exit !f}' \
    /proc/net/tcp
}

wait_listening() { # PORT PID
  for _ in $(seq 1 100); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# The process and its children (Kamailio's workers are all children of its main process).
tree() { echo "$1" $(pgrep -P "$1" || true); }

# KiB summed over a process tree: rss or pss (from smaps_rollup), and open descriptors.
rss_kib() { local t=0 p; for p in $(tree "$1"); do
  t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $t; }
pss_kib() { local t=0 p; for p in $(tree "$1"); do
  t=$((t + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done; echo $t; }
fds() { local t=0 p; for p in $(tree "$1"); do
  t=$((t + $(ls "/proc/$p/fd" 2>/dev/null | wc -l))); done; echo $t; }

# Runs the clients against PORT with COUNT connections; sets client_pid and opened, and
# returns once they are all open (or the client gave up).
open_clients() { # PORT COUNT LOG
  python3 "$here/idle-clients.py" "127.0.0.1:$1" "$2" --sources "$sources" --limit 900 \
    >"$3" 2>&1 &
  client_pid=$!
  for _ in $(seq 1 9600); do
    grep -q '^READY' "$3" && break
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.1
  done
  opened=$(sed -n 's/^READY open=\([0-9]*\).*/\1/p' "$3")
  opened=${opened:-0}
}

close_clients() {
  kill "$client_pid" 2>/dev/null || true
  wait "$client_pid" 2>/dev/null || true
  client_pid=""
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# measure NAME COUNT PORT: the server (server_pid) is up; prints one RESULT line.
measure() {
  local name=$1 n=$2 port=$3 tag=$work/$1-$2
  # Warm-up (one-time set-up of the TLS stack is not a per-device cost), then the baseline.
  open_clients "$port" 10 "$tag.warm.log"; close_clients
  sleep 2
  local rss0 pss0 fd0; rss0=$(rss_kib "$server_pid"); pss0=$(pss_kib "$server_pid")
  fd0=$(fds "$server_pid")
  local t0=$SECONDS
  open_clients "$port" "$n" "$tag.clients.log"
  local secs=$((SECONDS - t0))
  kill -0 "$server_pid" 2>/dev/null || echo "NOTE $name exited during the run (see $work)"
  sleep 2
  local rss1 pss1 fd1; rss1=$(rss_kib "$server_pid"); pss1=$(pss_kib "$server_pid")
  fd1=$(fds "$server_pid")
  local extra=""
  [ "$name" = stg ] && extra=" stg_tls_gauge=$(curl -s "http://127.0.0.1:$admin_port/metrics" \
    | awk '/^stg_connections\{transport="tls"\}/ {print $2}')"
  close_clients
  sleep 3
  local rss2; rss2=$(rss_kib "$server_pid")
  local per_rss=0 per_pss=0
  if [ "$opened" -gt 0 ]; then
    per_rss=$(( (rss1 - rss0) * 1024 / opened )); per_pss=$(( (pss1 - pss0) * 1024 / opened ))
  fi
  echo "RESULT $name n=$n open=$opened open_seconds=$secs base_rss_kib=$rss0 base_pss_kib=$pss0" \
    "rss_kib=$rss1 pss_kib=$pss1 bytes_per_conn_rss=$per_rss bytes_per_conn_pss=$per_pss" \
    "fds=$fd1 fds_per_conn=$(awk -v a="$fd1" -v b="$fd0" -v n="$opened" \
      'BEGIN {printf "%.2f", n ? (a - b) / n : 0}') rss_after_close_kib=$rss2$extra"
  grep '^FAILED' "$tag.clients.log" | sed "s/^/  $name n=$n /" || true
}

start_stg() { # COUNT
  local n=$1 per=$(( ($1 + sources - 1) / sources + 16 ))
  mkdir -p "$work/stg-data"
  cat > "$work/stg.toml" <<TOML
[node]
data_dir = "$work/stg-data"
[sip]
upstream = "sip:127.0.0.1:9"
max_connections = $((n + 1000))
# One source address stands for a few devices here; the cap is stg's limit, not the test's.
max_connections_per_source = $per
idle_timeout = "1h"
[[sip.listen]]
transport = "tls"
address = "127.0.0.1:$tls_port"
[admin]
listen = "127.0.0.1:$admin_port"
[log]
format = "json"
level = "info"
TOML
  # Started with systemd's soft limit: stg must raise it to the hard one by itself.
  (ulimit -Sn 1024; exec "$stg_bin" run --config "$work/stg.toml" 2> "$work/stg-$n.log") &
  server_pid=$!
  wait_listening "$tls_port" "$server_pid" || { echo "stg did not start:"; tail "$work/stg-$n.log"; exit 1; }
  local soft; soft=$(awk '/^Max open files/ {print $4}' "/proc/$server_pid/limits")
  echo "stg pid $server_pid: open-file soft limit $soft (hard $hard)$( [ "$soft" = "$hard" ] \
    && echo ', raised by stg from 1024' || echo ', NOT raised from 1024 to the hard limit')"
}

start_kamailio() { # COUNT
  local n=$1
  cat > "$work/kamailio-tls.cfg" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $work/stg-data/tls/cert.pem
private_key = $work/stg-data/tls/key.pem

[client:default]
verify_certificate = no
require_certificate = no
CFG
  cat > "$work/kamailio.cfg" <<CFG
#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
# One TLS worker: Debian 12's Kamailio 5.6.3 with OpenSSL 3 frees twice and crashes when
# several processes do handshakes (kamailio issue 3791; tls_threads_mode came in 5.7).
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
listen=tls:127.0.0.1:$kam_port
enable_tls=yes
tcp_max_connections=$((n + 1000))
tls_max_connections=$((n + 1000))
tcp_connection_lifetime=3600
open_files_limit=$hard
loadmodule "sl.so"
loadmodule "tls.so"
modparam("tls", "config", "$work/kamailio-tls.cfg")
modparam("tls", "connection_timeout", 3600)
request_route {
  if (method == "OPTIONS") { sl_send_reply("200", "OK"); exit; }
  sl_send_reply("403", "Forbidden");
}
CFG
  # Shared memory sized for the count (TLS state lives there); touched pages only count.
  kamailio -f "$work/kamailio.cfg" -DD -E -m $((512 + n / 8)) -M 16 > "$work/kamailio-$n.log" 2>&1 &
  server_pid=$!
  wait_listening "$kam_port" "$server_pid" \
    || { echo "kamailio did not start:"; tail "$work/kamailio-$n.log"; exit 1; }
}

for n in $counts; do
  if [ "$hard" != unlimited ] && [ $((n + 1000)) -gt "$hard" ]; then
    echo "SKIP n=$n: the open-file limit ($hard) cannot hold $n connections in one process"
    continue
  fi
  start_stg "$n"; measure stg "$n" "$tls_port"; stop_server
  if [ "$kamailio" = 1 ]; then
    start_kamailio "$n"; measure kamailio "$n" "$kam_port"; stop_server
  fi
done
echo "logs in $work"
