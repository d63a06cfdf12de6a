#!/usr/bin/env bash
# Calls to a registered device, stg side by side with Kamailio in one run: a SIPp UAS
# registers as uas@127.0.0.1, a SIPp UAC calls it through the server at rising rates
# (INVITE/180/200/ACK, hold, BYE/200: ../shared/bench/scenarios/uac_call.xml and
# uas_call.xml, the shared harness's `call` flow), and the server's CPU per call is read
# from /proc (its whole process tree).
#
#   bench/call.sh [--rates "250 500 1000 2000"] [--duration 10] [--hold-ms 1000]
#
# Why not ../shared/bench/sip-bench.sh -s call: it sends the REGISTER and the INVITE to one
# address. stg takes REGISTERs only from the internet side and calls for devices only from
# the PBX side (one listener each, as deployed): the UAS registers on stg's outside listener
# (local mode, digest: user `uas`), the UAC (the PBX) calls on its inside listener. One
# pass through stg per call, as one through Kamailio (registrar + stateful proxy on 15060).
# A one-off measurement on a quiet machine; not part of CI. Stops only what it started.
set -euo pipefail
rates="250 500 1000 2000 3000"; duration=10; hold=1000
while [ $# -gt 0 ]; do
  case $1 in
    --rates) rates=$2; shift 2 ;; --duration) duration=$2; shift 2 ;;
    --hold-ms) hold=$2; shift 2 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
shared=${STG_SHARED_DIR:-$here/../../shared}
bench=$shared/bench
scn=$bench/scenarios
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
work=$(mktemp -d /tmp/stg-bench-call.XXXXXX)
cat > "$work/stg.toml" <<TOML
[node]
data_dir = "$work"
[sip]
upstream = "sip:127.0.0.1:15070"
# One SIPp source stands for thousands of devices (see bench/stg-forward.toml).
max_transactions_per_source = 20000
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:25063"
side = "outside"
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:25064"
side = "inside"
[registrar]
domains = [{ name = "*", mode = "local" }]
digest_algorithms = ["MD5"]
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
kam_pid=$(cat /tmp/kamailio-bench-15060.pid)

# The UAS registers from its own port (the binding's flow is where calls go), as user
# uasN for step N: a new AOR per step, so no step forks to an earlier step's dead UAS.
register_xml() { # AUTH(0|1)
  local auth=$1
  printf '%s\n' '<?xml version="1.0" encoding="ISO-8859-1" ?>' '<!DOCTYPE scenario SYSTEM "sipp.dtd">' \
    '<scenario name="register">'
  reg() { # CSEQ CREDS
    cat <<XML
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:[service]@[remote_ip]>;tag=[pid]r
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: $1 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>$2
Expires: 3600
Content-Length: 0

]]></send>
XML
  }
  if [ "$auth" = 1 ]; then
    reg 1 ""
    echo '  <recv response="401" auth="true"/>'
    reg 2 $'\n[authentication]'
  else
    reg 1 ""
  fi
  echo '  <recv response="200"/>'
  echo '</scenario>'
}
register_xml 0 > "$work/register_plain.xml"
register_xml 1 > "$work/register_digest.xml"
step=0
for r in $rates; do
  step=$((step + 1))
  printf 'benchpw\n' | "$stg_bin" user add "uas$step" --realm 127.0.0.1 --password-stdin \
    --config "$work/stg.toml" >/dev/null
done

# CPU seconds (user + system) of a process and its children's threads so far.
cpu_of() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}
tck=$(getconf CLK_TCK)

# run NAME REG_TARGET REG_SCENARIO CALL_TARGET PID
run() {
  local name=$1 reg=$2 regsf=$3 call=$4 pid=$5 port=5080 r step=0
  for r in $rates; do
    port=$((port + 1)); step=$((step + 1))
    local tag=$work/$name-$r n=$((r * duration)) user=uas$step
    timeout 15 sipp "$reg" -sf "$regsf" -s "$user" -au "$user" -ap benchpw -m 1 -p "$port" \
      -i 127.0.0.1 -nostdin -timeout 10s >"$tag.reg.out" 2>&1 \
      || { echo "$name rate=$r: UAS registration failed ($tag.reg.out)"; continue; }
    timeout $((duration + 60)) sipp -sf "$scn/uas_call.xml" -p "$port" -i 127.0.0.1 -nostdin \
      -timeout $((duration + 50))s -buff_size 1048576 >"$tag.uas.out" 2>&1 &
    local uas=$!
    sleep 0.5
    local c0; c0=$(cpu_of "$pid")
    timeout $((duration + 60)) sipp "$call" -sf "$scn/uac_call.xml" -s "$user" -r "$r" -m "$n" \
      -d "$hold" -i 127.0.0.1 -nostdin -timeout $((duration + 40))s -buff_size 1048576 \
      -default_behaviors all,-abortunexp -recv_timeout 10000 -trace_stat -stf "$tag.csv" -fd 1 \
      >"$tag.uac.out" 2>&1 || true
    local c1; c1=$(cpu_of "$pid")
    kill "$uas" 2>/dev/null || true; wait "$uas" 2>/dev/null || true
    local ok failed
    ok=$(tail -1 "$tag.csv" | awk -F';' '{print $16}')
    failed=$(tail -1 "$tag.csv" | awk -F';' '{print $18}')
    local us=$(( (c1 - c0) * 1000000 / tck / (ok > 0 ? ok : 1) ))
    echo "RESULT $name rate=$r calls=$n ok=$ok failed=$failed server_us_per_call=$us"
    sleep 3
  done
}
run kamailio 127.0.0.1:15060 "$work/register_plain.xml" 127.0.0.1:15060 "$kam_pid"
run stg 127.0.0.1:25063 "$work/register_digest.xml" 127.0.0.1:25064 "$stg_pid"
