#!/usr/bin/env bash
# The web front's reverse proxy side by side with nginx (Debian), both over HTTPS (HTTP/1.1,
# keep-alive) in front of the same upstream (a second nginx serving a small file), measured
# with wrk: requests/s and p99 latency. Figures go in notes, not in tests.
#
#   bench/web.sh [path/to/stg]      (default: target/release/stg; build it with
#                                    cargo build --release -p stg)
# Environment: DURATION (10s), CONNECTIONS (50), THREADS (2).
# Needs: wrk, nginx, openssl. Everything binds 127.0.0.1 in a temp dir; every process this
# script starts is stopped by its PID at exit.
set -euo pipefail
STG=${1:-${CARGO_TARGET_DIR:-target}/release/stg}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
for bin in wrk nginx openssl "$STG"; do
  command -v "$bin" >/dev/null || { echo "missing: $bin (apt install wrk nginx openssl)" >&2; exit 69; }
done
DIR=$(mktemp -d /tmp/stg-web-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); STGP=$(free_port); ADMIN=$(free_port); SIP=$(free_port)
mkdir -p "$DIR/www" "$DIR/up" "$DIR/px" "$DIR/stg"
# nginx workers run as nobody: the served file must be readable by them.
chmod 755 "$DIR" "$DIR/www"
head -c 1024 /dev/zero | tr '\0' 'a' > "$DIR/www/hello.txt"
chmod 644 "$DIR/www/hello.txt"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null

common="pid PIDFILE; error_log ERRLOG warn; daemon off; master_process on;
events { worker_connections 4096; }"
cat > "$DIR/up/nginx.conf" <<CONF
${common//PIDFILE/$DIR/up/nginx.pid}
worker_processes 1;
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$UP; root $DIR/www; } }
CONF
sed -i "s|ERRLOG|$DIR/up/error.log|" "$DIR/up/nginx.conf"
cat > "$DIR/px/nginx.conf" <<CONF
${common//PIDFILE/$DIR/px/nginx.pid}
worker_processes auto;
http { access_log off; keepalive_requests 100000;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX ssl http2;
    ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem;
    location / { proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto https;
      add_header Strict-Transport-Security "max-age=31536000" always; } } }
CONF
sed -i "s|ERRLOG|$DIR/px/error.log|" "$DIR/px/nginx.conf"
nginx -p "$DIR/up" -c "$DIR/up/nginx.conf" & PIDS+=($!)
nginx -p "$DIR/px" -c "$DIR/px/nginx.conf" & PIDS+=($!)
cat > "$DIR/stg/stg.toml" <<CONF
[node]
data_dir = "$DIR/stg/data"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
[tls]
certificate = "$DIR/cert.pem"
private_key = "$DIR/key.pem"
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:$SIP"
[web]
listen = "127.0.0.1:$STGP"
max_connections_per_source = 1000
[[web.proxy]]
prefix = "/"
upstream = "http://127.0.0.1:$UP"
CONF
"$STG" run --config "$DIR/stg/stg.toml" 2>"$DIR/stg/stg.log" & PIDS+=($!)
for p in $UP $NGX $STGP; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
run() { # name port -> "rps p99_ms"
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "https://127.0.0.1:$2/hello.txt")
  echo "$out" > "$DIR/$1.wrk"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  local errs; errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  echo "$1: $rps req/s, p99 $p99 ms ${errs:+($errs)}" >&2
  echo "$rps $p99"
}
wrk -t1 -c4 -d2s "https://127.0.0.1:$STGP/hello.txt" >/dev/null
wrk -t1 -c4 -d2s "https://127.0.0.1:$NGX/hello.txt" >/dev/null
read -r s_rps s_p99 < <(run stg "$STGP")
read -r n_rps n_p99 < <(run nginx "$NGX")
awk -v a="$s_rps" -v b="$n_rps" -v c="$s_p99" -v d="$n_p99" \
  'BEGIN { printf "stg/nginx: requests/s %.2f, p99 latency %.2f\n", a/b, c/d }'
