#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ (gitignored) with starting inputs:
#   message:  the RFC 4475 and RFC 5118 conformance messages, read where they are
#             (STG_CONFORMANCE_DIR, default ../../shared/conformance; never copied into git),
#             plus our own seeds/message/*;
#   framer:   the same, each behind the 6-byte prefix that means "default limits, one read"
#             (see stg_sip_msg::fuzz_support::framer), plus one stream of all of them
#             joined with CRLF CRLF keep-alives and read in 7-octet chunks;
#   proxy_v2: seeds/proxy_v2/*, hand-made headers (v4 + SIP, v6, LOCAL, TLVs).
# Usage: fuzz/seed.sh   then   cd fuzz && cargo +nightly fuzz run <target>
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
conf=${STG_CONFORMANCE_DIR:-$here/../../shared/conformance}
if [[ ! -f $conf/rfc4475/manifest.tsv ]]; then
    echo "seed.sh: conformance corpus not found at $conf (set STG_CONFORMANCE_DIR)" >&2
    exit 1
fi

corpus=$here/corpus
mkdir -p "$corpus/message" "$corpus/framer" "$corpus/proxy_v2"

prefix() { printf '\x00\x00\x00\x00\x00\x00'; }
stream=$corpus/framer/all-messages-chunked
printf '\x00\x00\x07\x07\x07\x07' >"$stream"

for f in "$conf"/rfc4475/*.dat "$conf"/rfc5118/*.dat "$here"/seeds/message/*; do
    [[ -f $f ]] || continue
    name=$(basename "$(dirname "$f")")-$(basename "$f")
    cp "$f" "$corpus/message/$name"
    { prefix; cat "$f"; } >"$corpus/framer/$name"
    { cat "$f"; printf '\r\n\r\n'; } >>"$stream"
done
cp "$here"/seeds/proxy_v2/* "$corpus/proxy_v2/"

for t in message framer proxy_v2; do
    echo "seed.sh: $t: $(find "$corpus/$t" -type f | wc -l) inputs"
done
