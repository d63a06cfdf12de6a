//! The proxy_v2 fuzz target's checks, shared by `proxy_v2.rs` (the target) and
//! `stg-edge`'s unit tests (which include this file with `#[path]`), so the committed seeds
//! and regressions replay on stable. The includer names the module under test `pp` in the
//! parent module (`use stg_edge::proxy_protocol as pp;` / `use crate::proxy_protocol as pp;`).

use super::pp::{
    encode, encode_with_tlvs, parse, parse_with_limit, Header, Parsed, Tlv, FIXED_LEN,
    MAX_HEADER_LEN,
};

/// Panics when `proxy_protocol` breaks its documented contract on `data`.
pub(super) fn check(data: &[u8]) {
    let whole = parse(data);
    let decided_at = check_prefixes(data);
    // Past the decision, a few longer prefixes must give the same answer (checking every
    // one would make large inputs quadratic).
    if let Some(at) = decided_at {
        let span = data.len() - at;
        for len in [at + 1, at + 2, at + span / 2, data.len()] {
            if len <= data.len() {
                assert_eq!(
                    parse(&data[..len]),
                    whole,
                    "decision changed at {len} bytes"
                );
            }
        }
    }
    // A limit above the default accepts at least what the default does.
    if let Ok(Parsed::Done { .. }) = &whole {
        assert_eq!(parse_with_limit(data, usize::MAX), whole);
    }
    if let Ok(Parsed::Done { header_len, header }) = &whole {
        check_done(data, *header_len, header);
    }
}

/// Every prefix up to the first decision (Done or Err); returns that length.
fn check_prefixes(data: &[u8]) -> Option<usize> {
    let mut no_decision_before = 0;
    let mut exact_at: Option<usize> = None;
    for len in 0..=data.len() {
        let r = parse(&data[..len]);
        match &r {
            Ok(Parsed::Incomplete { needed }) => {
                assert!(*needed > 0, "Incomplete with needed = 0 at {len}");
                assert!(
                    exact_at.is_none_or(|at| len < at),
                    "still Incomplete at {len} after needed was exact (decision due at {exact_at:?})"
                );
                no_decision_before = no_decision_before.max(len + needed);
                if len >= FIXED_LEN {
                    exact_at.get_or_insert(len + needed);
                }
            }
            Ok(Parsed::Done { header_len, .. }) => {
                assert!(
                    len >= no_decision_before,
                    "Done at {len}, before the bytes asked for"
                );
                assert!(*header_len <= len && *header_len <= MAX_HEADER_LEN);
                assert_eq!(
                    r,
                    parse(&data[..*header_len]),
                    "Done depends on trailing bytes"
                );
                return Some(len);
            }
            Err(_) => return Some(len),
        }
    }
    None
}

fn check_done(data: &[u8], header_len: usize, header: &Header) {
    let range = &header.tlv_range;
    assert!(FIXED_LEN <= range.start && range.start <= range.end && range.end <= header_len);
    let tlvs: Vec<Tlv<'_>> = header.tlvs(data).collect();
    // Validated framing: the TLVs cover the range exactly.
    let covered: usize = tlvs.iter().map(|t| 3 + t.value.len()).sum();
    assert_eq!(covered, range.len(), "TLVs do not cover tlv_range");
    let _ = (header.addresses.source(), header.addresses.destination());

    let plain = encode(header);
    let again = reparse(&plain, header);
    assert_eq!(again.tlvs(&plain).count(), 0);

    let with_tlvs = encode_with_tlvs(header, &tlvs).expect("TLVs from a parsed header fit");
    let again = reparse(&with_tlvs, header);
    assert!(
        again.tlvs(&with_tlvs).eq(tlvs.iter().copied()),
        "TLVs changed in a round trip"
    );
}

fn reparse(encoded: &[u8], original: &Header) -> Header {
    match parse(encoded) {
        Ok(Parsed::Done { header_len, header }) => {
            assert_eq!(header_len, encoded.len());
            assert_eq!(header.command, original.command);
            assert_eq!(header.transport, original.transport);
            assert_eq!(header.addresses, original.addresses);
            header
        }
        other => panic!("encode({original:?}) = {encoded:02x?} parses as {other:?}"),
    }
}
