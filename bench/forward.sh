#!/usr/bin/env bash
# stg side by side with Kamailio in one run of the shared harness's `forward` scenario:
# both proxies relay every new request to the same SIPp UAS (127.0.0.1:5070).
#   bench/forward.sh [extra sip-bench.sh options, e.g. --call-rates "400 800 1600" --repeats 3]
# Needs ../shared/bench, kamailio and sip-tester. A one-off measurement on a quiet machine;
# not part of CI. Stops only what it started, by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${STG_SHARED_DIR:-$here/../../shared}
bench=$shared/bench
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
data=$(mktemp -d /tmp/stg-bench.XXXXXX)
STG_NODE__DATA_DIR=$data "$stg_bin" run --config "$here/stg-forward.toml" 2> "$data/stg.log" &
stg_pid=$!
"$bench/kamailio/run-kamailio.sh" start --port 15064 --forward 5070
cleanup() {
  "$bench/kamailio/run-kamailio.sh" stop --port 15064 || true
  kill "$stg_pid" 2>/dev/null || true
  wait "$stg_pid" 2>/dev/null || true
}
trap cleanup EXIT
sleep 1
kill -0 "$stg_pid"
"$bench/sip-bench.sh" -s forward "$@" 127.0.0.1:15064 127.0.0.1:25060
