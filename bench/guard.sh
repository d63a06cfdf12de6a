#!/usr/bin/env bash
# The guard's outside inputs, stg against Debian's fail2ban, side by side on the same
# generated log, each inside a network namespace this script creates (never the host's
# firewall): a line appended to a followed log → ban decided (its log line) and
# → nftables element present (`nft monitor`), p50/p99; bans/s on a burst of distinct
# sources; stop and start of stg with 10,000 bans in its nftables sets.
#   bench/guard.sh [LATENCY_LINES] [BURST_LINES]   (defaults 200 and 10000; fail2ban gets
#   the burst capped at 2000: at its rate more would take minutes; STG_BIN=path skips the
#   release build; STG_TAIL_POLL=50ms sets stg's guard.tail_poll; STG_ONLY=1 skips fail2ban)
# Needs root (ip netns, nft), the fail2ban package (its service stays stopped: only a
# fail2ban-server with a private configuration runs, inside the namespace) and python3.
# "decided" is read from each tool's own log ("[jail] Ban <ip>", its timestamp against the
# append time), "nftables" from `nft monitor`. A one-off measurement, not part of CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lat_lines=${1:-200}
burst=${2:-10000}
f2b_burst=$(( burst < 2000 ? burst : 2000 ))
command -v fail2ban-server >/dev/null || { echo "fail2ban missing: apt-get install fail2ban" >&2; exit 69; }
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns, nft)" >&2; exit 77; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
if [ -z "${STG_BIN:-}" ]; then
  cargo build --release -p stg --manifest-path "$here/../Cargo.toml" >&2
fi
stg_bin=${STG_BIN:-$CARGO_TARGET_DIR/release/stg}
ns=stg-guard-bench-$$
work=$(mktemp -d /tmp/stg-guard-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }

# The measuring side: appends lines (one new source each) to a log, and times the ban
# datagrams arriving on a unix socket and the elements `nft monitor` reports.
cat > "$work/measure.py" <<'PY'
import re, socket, subprocess, sys, threading, time
log, toollog, n, rate, table, ns, base = sys.argv[1:8]
n, rate, base = int(n), float(rate), int(base)
ips = [f"10.{(base + i) >> 16 & 255}.{(base + i) >> 8 & 255}.{(base + i) & 255}" for i in range(n)]
sent, banned, kernel = {}, {}, {}
ip_re = re.compile(rb"(\d+\.\d+\.\d+\.\d+)")
# "Ban <ip>" lines of stg's and fail2ban's logs, by their own timestamps (UTC, both).
ban_re = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)[.,](\d+).*\] Ban (\d+\.\d+\.\d+\.\d+)")
def decided():
    import calendar
    with open(toollog, errors="replace") as f:
        for line in f:
            m = ban_re.search(line)
            if not m or m.group(4) not in sent: continue
            t = calendar.timegm(time.strptime(m.group(1) + " " + m.group(2), "%Y-%m-%d %H:%M:%S"))
            banned.setdefault(m.group(4), t + float("0." + m.group(3)))
mon = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor", "elements"], stdout=subprocess.PIPE)
def monitor():
    for line in mon.stdout:
        if b"add element" not in line or table.encode() not in line: continue
        t = time.monotonic()
        for m in ip_re.finditer(line): kernel.setdefault(m.group(1).decode(), t)
stop = threading.Event()
threading.Thread(target=monitor, daemon=True).start()
time.sleep(0.5)
with open(log, "a", buffering=1) as f:
    for ip in ips:
        ts = time.strftime("%b %e %H:%M:%S")
        f.write(f"{ts} web fonbo[7]: TRUCO_KO [{ip}] token invalido\n")
        sent[ip] = (time.monotonic(), time.time())
        if rate > 0: time.sleep(1 / rate)
deadline = time.monotonic() + 120
while len(kernel) < n and time.monotonic() < deadline: time.sleep(0.05)
time.sleep(1)
stop.set(); mon.terminate()
decided()
def pct(d, wall):
    lat = sorted((d[ip] - sent[ip][wall]) * 1000 for ip in ips if ip in d)
    if not lat: return "none"
    return f"p50 {lat[len(lat) // 2]:.0f} ms, p99 {lat[min(len(lat) - 1, len(lat) * 99 // 100)]:.0f} ms ({len(lat)}/{n})"
def rate_of(d, wall):
    if not d: return "none"
    first = min(v[wall] for v in sent.values())
    return f"{len(d) / max(max(d.values()) - first, 1e-9):.0f} bans/s"
print(f"decided: {pct(banned, 1)}; {rate_of(banned, 1)}")
print(f"nftables: {pct(kernel, 0)}; {rate_of(kernel, 0)}")
PY

# --- stg ---
mkdir -p "$work/stg"
cat > "$work/stg/stg.toml" <<TOML
[node]
data_dir = "$work/stg/data"
[admin]
listen = "127.0.0.1:19090"
[log]
level = "info"
format = "human"
[sip]
upstream = "sip:127.0.0.1:15070"
[[sip.listen]]
transport = "udp"
address = "127.0.0.1:15060"
[guard]
firewall = true
firewall_table = "stgbench"
ban_syslog = ""
tail_poll = "${STG_TAIL_POLL:-1s}"
[[guard.logs]]
path = "$work/stg.log"
filter = "truco-ko"
jail = "bench"
maxretry = 1
TOML
: > "$work/stg.log"
start_stg() { # sets stg_pid and started (seconds to /health)
  local t0; t0=$(date +%s.%N)
  # `ip netns exec` execs stg: $! is stg's own pid.
  NO_COLOR=1 ip netns exec "$ns" "$stg_bin" run --config "$work/stg/stg.toml" >> "$work/stg/out.log" 2>&1 &
  stg_pid=$!; pids+=("$stg_pid")
  until inns curl -sf http://127.0.0.1:19090/health >/dev/null 2>&1; do sleep 0.01; done
  started=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
}
start_stg
echo "== stg: ${lat_lines} lines at 20/s (poll ${STG_TAIL_POLL:-1s})" >&2
python3 "$work/measure.py" "$work/stg.log" "$work/stg/out.log" "$lat_lines" 20 stgbench "$ns" 0
echo "== stg: burst of $burst lines" >&2
python3 "$work/measure.py" "$work/stg.log" "$work/stg/out.log" "$burst" 0 stgbench "$ns" 100000
n_set() { inns nft -j list set inet stgbench banned4 | grep -o '"10\.[0-9.]*"' | wc -l; }
echo "stg: $(n_set) elements in the set" >&2
t0=$(date +%s.%N); kill -TERM "$stg_pid"; wait "$stg_pid" || true
echo "stg stop with $(n_set) bans: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f s", b - a }')"
start_stg
echo "stg start with $(n_set) bans (to /health): $started s; $(grep -o 'bans=[0-9]*' "$work/stg/out.log" | tail -1) restored"
kill -TERM "$stg_pid"; wait "$stg_pid" || true

[ -n "${STG_ONLY:-}" ] && exit 0

# --- fail2ban (a private configuration: its own socket, database in memory, inside $ns) ---
conf=$work/f2b
cp -a /etc/fail2ban "$conf"
rm -f "$conf"/jail.d/* "$conf"/jail.local
cat > "$conf/fail2ban.local" <<INI
[Definition]
logtarget = $work/f2b.out
socket = $work/f2b.sock
pidfile = $work/f2b.pid
dbfile = :memory:
INI
cat > "$conf/filter.d/truco-bench.conf" <<'INI'
[Definition]
failregex = TRUCO_KO <ADDR>(?:\s|$)
INI
cat > "$conf/jail.local" <<INI
[DEFAULT]
backend = ${F2B_BACKEND:-pyinotify}
[bench]
enabled = true
filter = truco-bench
logpath = $work/f2b.log
maxretry = 1
findtime = 600
bantime = 3600
action = nftables[type=allports]
INI
: > "$work/f2b.log"
inns fail2ban-server -c "$conf" -s "$work/f2b.sock" -p "$work/f2b.pid" -b -x >/dev/null 2>&1
sleep 2
f2b_pid=$(cat "$work/f2b.pid"); pids+=("$f2b_pid")
echo "== fail2ban $(fail2ban-server -V | head -1): ${lat_lines} lines at 20/s" >&2
python3 "$work/measure.py" "$work/f2b.log" "$work/f2b.out" "$lat_lines" 20 f2b-table "$ns" 0
echo "== fail2ban: burst of $f2b_burst lines" >&2
python3 "$work/measure.py" "$work/f2b.log" "$work/f2b.out" "$f2b_burst" 0 f2b-table "$ns" 100000
nb=$(inns nft -j list table inet f2b-table | grep -o '"10\.[0-9.]*"' | sort -u | wc -l)
t0=$(date +%s.%N)
inns fail2ban-client -c "$conf" -s "$work/f2b.sock" stop >/dev/null 2>&1 || true
while kill -0 "$f2b_pid" 2>/dev/null; do sleep 0.05; done
echo "fail2ban stop with $nb bans: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f s", b - a }')"
