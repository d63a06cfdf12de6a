#!/usr/bin/env bash
# `stg ban test-filter` against Debian's `fail2ban-regex`, side by side on one generated log
# with the same filters: fail2ban's sshd.conf (from the shared conformance corpus, read in
# place) and a TRUCO_KO filter (stg's built-in `truco-ko`; for fail2ban the same regex
# written to a temp filter file).
#   bench/guard-filter.sh [LINES] [REPEATS]   (default 1000000 lines, about 5 % of them
#   matching; each tool runs REPEATS times, default 3, and its fastest run counts: the
#   machine is shared, the fastest run is the one least disturbed)
# Needs ../shared/conformance and the fail2ban package (only its fail2ban-regex tool is run;
# the fail2ban service is never started). A one-off measurement, not part of CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lines=${1:-1000000}
repeats=${2:-3}
conformance=${STG_CONFORMANCE_DIR:-$here/../../shared/conformance}
sshd_conf=$conformance/fail2ban/filter.d/sshd.conf
[ -f "$sshd_conf" ] || { echo "no $sshd_conf (set STG_CONFORMANCE_DIR)" >&2; exit 66; }
command -v fail2ban-regex >/dev/null || { echo "fail2ban-regex missing: apt-get install fail2ban" >&2; exit 69; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/stg-target}
cargo build --release -p stg --manifest-path "$here/../Cargo.toml"
stg_bin=$CARGO_TARGET_DIR/release/stg
work=$(mktemp -d /tmp/stg-guard-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The log: syslog lines of sshd, cron, postfix and web apps; 2.5 % sshd failures and 2.5 %
# TRUCO_KO lines, addresses spread over 65,536 sources.
awk -v n="$lines" 'BEGIN {
  srand(42)
  split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec", mon, " ")
  for (i = 0; i < n; i++) {
    t = i % 86400
    ts = sprintf("%s %2d %02d:%02d:%02d", mon[int(i / 2678400) % 12 + 1], int(i / 86400) % 28 + 1, int(t / 3600), int(t / 60) % 60, t % 60)
    ip = sprintf("198.%d.%d.%d", 18 + int(rand() * 2), int(rand() * 256), int(rand() * 256))
    pid = 1000 + int(rand() * 30000)
    r = i % 40
    if (r == 0)      printf "%s srv sshd[%d]: Failed password for invalid user admin from %s port %d ssh2\n", ts, pid, ip, 1024 + pid
    else if (r == 1) printf "%s srv sercen[%d]: TRUCO_KO [%s] fail2ban sip 10:11:12.123\n", ts, pid, ip
    else if (r < 8)  printf "%s srv sshd[%d]: Accepted publickey for deploy from 10.0.%d.%d port %d ssh2: ED25519 SHA256:abc\n", ts, pid, int(rand() * 256), int(rand() * 256), 1024 + pid
    else if (r < 14) printf "%s srv sshd[%d]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)\n", ts, pid
    else if (r < 20) printf "%s srv CRON[%d]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n", ts, pid
    else if (r < 28) printf "%s srv postfix/smtpd[%d]: connect from unknown[%s]\n", ts, pid, ip
    else if (r < 34) printf "%s srv fonbo[%d]: GET /fonbo/api/v1/status 200 12ms user=%d\n", ts, pid, pid
    else             printf "%s srv kernel: [%d.%06d] IN=eth0 OUT= SRC=%s DST=10.0.0.1 LEN=60 PROTO=TCP DPT=443\n", ts, i, pid, ip
  }
}' > "$work/bench.log"
cat > "$work/truco-ko.conf" <<'CONF'
[Definition]
failregex = TRUCO_KO <ADDR>(?:\s|$)
datepattern = {^LN-BEG}
CONF

now() { date +%s.%N; }
run() { # name, command...: the fastest of $repeats runs
  local name=$1; shift
  local best=
  for _ in $(seq "$repeats"); do
    local t0 t1
    t0=$(now); "$@" > "$work/$name.out" 2>&1 || true; t1=$(now)
    local d; d=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ -z "$best" ] || awk -v d="$d" -v b="$best" 'BEGIN { exit !(d < b) }'; then best=$d; fi
  done
  local r; r=$(awk -v n="$lines" -v d="$best" 'BEGIN { printf "%.0f", n / d }')
  printf '%-36s %8.2f s %12s lines/s\n' "$name" "$best" "$r" >&2
  echo "$r"
}
echo "log: $lines lines ($(du -h "$work/bench.log" | cut -f1)), $(nproc) cores, best of $repeats runs" >&2
s1=$(run "stg test-filter sshd" "$stg_bin" ban test-filter "$sshd_conf" "$work/bench.log")
f1=$(run "fail2ban-regex sshd" fail2ban-regex --print-no-missed --print-no-ignored "$work/bench.log" "$sshd_conf")
s2=$(run "stg test-filter truco-ko" "$stg_bin" ban test-filter truco-ko "$work/bench.log")
f2=$(run "fail2ban-regex truco-ko" fail2ban-regex --print-no-missed --print-no-ignored "$work/bench.log" "$work/truco-ko.conf")
grep -h '^Lines:' "$work"/*.out >&2 || true
echo "ratio sshd:     $(awk -v a="$s1" -v b="$f1" 'BEGIN{printf "%.0fx", a / b}')"
echo "ratio truco-ko: $(awk -v a="$s2" -v b="$f2" 'BEGIN{printf "%.0fx", a / b}')"
