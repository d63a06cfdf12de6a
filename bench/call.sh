#!/usr/bin/env bash
# Calls to registered devices, stg side by side with Kamailio in one run of the shared
# harness's `call` scenario (../shared/bench/sip-bench.sh): a SIPp UAS registers as
# uasN@target, a SIPp UAC calls it through the target (INVITE/180/200/ACK, BYE/200).
#
#   bench/call.sh [extra sip-bench.sh options, e.g. --call-rates "500 1000 2000" --repeats 3]
#
# Targets, in this order (ratios are against the first):
#   127.0.0.1:15060  Kamailio: registrar + transaction-stateful proxy (the anchor)
#   127.0.0.1:25063  stg, local registrar (no digest, embedded store): the UAS's binding is
#                    its flow, and the call goes to it as a PBX's call goes to a device
# Both run on one address, so 127.0.0.0/8 is stg's trusted network: the caller is the
# inside (the PBX), the UAS registers through the outside listener. One pass through stg
# per call, as one through Kamailio.
# A one-off measurement on a quiet machine; not part of CI. Stops only what it started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${STG_SHARED_DIR:-$here/../../shared}
bench=$shared/bench
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
work=$(mktemp -d /tmp/stg-bench-call.XXXXXX)
cat > "$work/stg.toml" <<TOML
[node]
data_dir = "$work"
[sip]
upstream = "sip:127.0.0.1:15070"
trusted_networks = ["127.0.0.0/8"]
# One SIPp source stands for thousands of devices (see bench/stg-forward.toml).
max_transactions_per_source = 20000
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:25063"
[registrar]
domains = [{ name = "*", mode = "local", authenticate = false }]
[admin]
listen = "127.0.0.1:29063"
[log]
format = "json"
level = "warn"
TOML
"$stg_bin" run --config "$work/stg.toml" 2> "$work/stg.log" &
stg_pid=$!
cleanup() {
  "$bench/kamailio/run-kamailio.sh" stop --port 15060 >/dev/null 2>&1 || true
  kill "$stg_pid" 2>/dev/null || true
  wait "$stg_pid" 2>/dev/null || true
}
trap cleanup EXIT
"$bench/kamailio/run-kamailio.sh" start --port 15060
sleep 1
kill -0 "$stg_pid"
"$bench/sip-bench.sh" -s call "$@" 127.0.0.1:15060 127.0.0.1:25063
