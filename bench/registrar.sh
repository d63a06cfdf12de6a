#!/usr/bin/env bash
# stg's registrar side by side with Kamailio's in one run of the shared harness
# (../shared/bench/sip-bench.sh): REGISTER rate, CPU per REGISTER and memory per binding.
#
#   bench/registrar.sh [extra sip-bench.sh options, e.g. --rates "1000 2000 4000" --repeats 3]
#
# Targets, in this order (ratios are against the first):
#   127.0.0.1:15060  Kamailio, the registrar (the anchor)
#   127.0.0.1:25060  stg, through mode, embedded store, in front of a Kamailio registrar on
#                    127.0.0.1:15070 (the PBX); only stg's own process is charged
#   127.0.0.1:25061  stg, the same with the bindings in Redis (127.0.0.1:16379, started here)
# then `register-auth`: Kamailio WITH_AUTH on 15062 vs stg in local mode (digest, one user
# `bench`/`benchpw` as the harness expects) on 25062.
# Memory per binding with Redis adds Redis's own growth (INFO used_memory), printed apart.
# A one-off measurement on a quiet machine; not part of CI. Stops only what it started, by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${STG_SHARED_DIR:-$here/../../shared}
bench=$shared/bench
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
work=$(mktemp -d /tmp/stg-bench-reg.XXXXXX)
pids=()
cleanup() {
  for p in 15060 15070 15062; do "$bench/kamailio/run-kamailio.sh" stop --port $p >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

node() { # name port mode store_url
  local name=$1 port=$2 mode=$3 url=$4
  mkdir -p "$work/$name"
  cat > "$work/$name/stg.toml" <<TOML
[node]
data_dir = "$work/$name"
[sip]
upstream = "sip:127.0.0.1:15070"
# One SIPp source stands for thousands of devices (see bench/stg-forward.toml).
max_transactions_per_source = 20000
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:$port"
[[sip.listen]]
transport = "tcp"
address = "127.0.0.1:$port"
[registrar]
domains = [{ name = "*", mode = "$mode" }]
# SIPp answers only the first challenge, and only MD5.
digest_algorithms = ["MD5"]
[store]
url = "$url"
[admin]
listen = "127.0.0.1:$((port + 4000))"
[log]
format = "json"
level = "warn"
TOML
}

redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 &
pids+=($!)
node embedded 25060 through ""
node redis 25061 through "redis://127.0.0.1:16379"
node local 25062 local ""
printf 'benchpw\n' | "$stg_bin" user add bench --realm 127.0.0.1 --password-stdin \
  --config "$work/local/stg.toml"
for n in embedded redis local; do
  "$stg_bin" run --config "$work/$n/stg.toml" 2> "$work/$n/stg.log" &
  pids+=($!)
done
"$bench/kamailio/run-kamailio.sh" start --port 15060
"$bench/kamailio/run-kamailio.sh" start --port 15070
"$bench/kamailio/run-kamailio.sh" start --port 15062 --auth
sleep 1
redis_mem() { redis-cli -p 16379 info memory | awk -F: '/^used_memory:/{print $2+0}'; }
r0=$(redis_mem)
"$bench/sip-bench.sh" -s memory "$@" 127.0.0.1:15060 127.0.0.1:25060 127.0.0.1:25061
r1=$(redis_mem)
echo "redis used_memory grew by $((r1 - r0)) bytes for the memory scenario's AORs on 25061"
"$bench/sip-bench.sh" -s register "$@" 127.0.0.1:15060 127.0.0.1:25060 127.0.0.1:25061
# The harness's register-auth registers every AOR with ONE digest user (`bench`), which
# Kamailio's bench config accepts and stg refuses (RFC 3261 §10.3 step 6: a user registers
# only its own AOR): run it only to see that refusal (STG_BENCH_AUTH=1).
if [ "${STG_BENCH_AUTH:-0}" = 1 ]; then
  "$bench/sip-bench.sh" -s register-auth "$@" 127.0.0.1:15062 127.0.0.1:25062
fi
