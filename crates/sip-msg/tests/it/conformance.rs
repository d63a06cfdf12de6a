//! Parser verdicts on the RFC 4475 and RFC 5118 torture messages.

use stg_sip_msg::{Message, ParseErrorKind, StatusCode};

use crate::{load, manifest};

#[test]
fn rfc4475_verdicts() {
    let mut checked = 0;
    for (name, expected) in manifest("rfc4475") {
        if name == "test" {
            continue; // in the archive, referenced by no section
        }
        let raw = load("rfc4475", &name);
        let parsed = Message::parse(raw);
        match expected.as_str() {
            "valid" | "valid-but-unusual" => {
                if let Err(e) = &parsed {
                    panic!("{name}: expected valid, got {e}");
                }
            }
            "invalid" => assert!(parsed.is_err(), "{name}: expected invalid, parsed fine"),
            other => panic!("{name}: unknown verdict {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 49);
}

#[test]
fn rfc5118_verdicts() {
    let rows = manifest("rfc5118");
    assert_eq!(rows.len(), 12);
    for (name, expected) in rows {
        let parsed = Message::parse(load("rfc5118", &name));
        match expected.as_str() {
            "invalid" => assert!(parsed.is_err(), "{name}: expected invalid"),
            _ => {
                if let Err(e) = parsed {
                    panic!("{name}: expected valid, got {e}");
                }
            }
        }
    }
}

#[test]
fn torture_details() {
    let m = Message::parse(load("rfc4475", "wsinv")).unwrap();
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.cseq(), 9);
    assert_eq!(m.header_values_by_name(b"NewFangledHeader").count(), 1);

    let m = Message::parse(load("rfc4475", "dblreq")).unwrap();
    assert_eq!(m.method_bytes(), b"REGISTER");
    assert!(m.body().is_empty());

    let m = Message::parse(load("rfc4475", "mpart01")).unwrap();
    assert_eq!(m.body().len(), 553);

    let m = Message::parse(load("rfc4475", "longreq")).unwrap();
    assert_eq!(m.via_count(), 34);

    let m = Message::parse(load("rfc4475", "intmeth")).unwrap();
    assert_eq!(m.method(), Some(stg_sip_msg::Method::Extension));

    let m = Message::parse(load("rfc4475", "noreason")).unwrap();
    assert_eq!(m.status(), Some(StatusCode::TRYING));
    assert_eq!(m.reason_phrase(), b"");

    let e = Message::parse(load("rfc4475", "badvers")).unwrap_err();
    assert_eq!(e.status(), StatusCode::VERSION_NOT_SUPPORTED);
    let e = Message::parse(load("rfc4475", "mismatch01")).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::CSeqMethod);
    let e = Message::parse(load("rfc4475", "insuf")).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::Missing(_)), "{e}");

    let m = Message::parse(load("rfc5118", "port-ambiguous")).unwrap();
    let uri = m.request_uri().unwrap();
    assert_eq!(uri.as_sip().unwrap().port, None);
}

/// No input panics the parser: every prefix and single-byte corruption of every message.
#[test]
fn truncations_and_corruptions_never_panic() {
    for sub in ["rfc4475", "rfc5118"] {
        for (name, _) in manifest(sub) {
            let raw = load(sub, &name);
            for cut in 0..raw.len() {
                let _ = Message::parse(raw.slice(..cut));
            }
            for i in (0..raw.len()).step_by(7) {
                for b in [
                    0u8, b'\r', b'\n', b' ', b':', b';', b',', b'"', b'<', b'>', 0xff,
                ] {
                    let mut v = raw.to_vec();
                    v[i] = b;
                    let _ = Message::parse(v.into());
                }
            }
        }
    }
}
