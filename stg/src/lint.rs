//! `stg sip lint`: an operator's check of one SIP message copied from sngrep, a capture or a
//! log. Messages pasted from a terminal usually lost their CRs: when the file has no CR at
//! all, the header section's LFs are read as CRLF (and said so); the body is left alone.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use bytes::Bytes;
use stg_sip_msg::{HeaderName, Message};

pub(crate) fn run(file: &Path) -> ExitCode {
    let raw = if file == Path::new("-") {
        let mut v = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut v) {
            eprintln!("stg: stdin: {e}");
            return ExitCode::from(crate::exit::NOINPUT);
        }
        v
    } else {
        match std::fs::read(file) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("stg: {}: {e}", file.display());
                return ExitCode::from(crate::exit::NOINPUT);
            }
        }
    };
    let (bytes, converted) = normalize(raw);
    if converted {
        println!("note: no CR in the input: header lines taken as CRLF-terminated");
    }
    match Message::parse(Bytes::from(bytes)) {
        Ok(m) => {
            describe(&m);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("malformed: {e}");
            println!(
                "a proxy answers: {} {}",
                e.status(),
                e.status().canonical_reason()
            );
            ExitCode::from(1)
        }
    }
}

fn normalize(raw: Vec<u8>) -> (Vec<u8>, bool) {
    if raw.contains(&b'\r') {
        return (raw, false);
    }
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(raw.len(), |p| p + 2);
    let mut out = Vec::with_capacity(raw.len() + 64);
    for &b in &raw[..split] {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out.extend_from_slice(&raw[split..]);
    (out, true)
}

fn describe(m: &Message) {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if m.is_request() {
        println!("valid SIP request: {}", s(m.start_line()));
    } else {
        println!("valid SIP response: {}", s(m.start_line()));
    }
    println!("  Call-ID: {}", s(m.call_id()));
    println!("  CSeq: {} {}", m.cseq(), s(m.cseq_method()));
    if let Some(f) = m.from() {
        println!(
            "  From: {} (tag {})",
            s(f.uri.as_bytes()),
            s(f.tag().unwrap_or(b"-"))
        );
    }
    if let Some(t) = m.to() {
        println!(
            "  To: {} (tag {})",
            s(t.uri.as_bytes()),
            s(t.tag().unwrap_or(b"-"))
        );
    }
    for (i, v) in m.vias().enumerate() {
        println!(
            "  Via[{i}]: {} {} branch={}",
            s(v.transport),
            s(v.sent_by()),
            s(v.branch().unwrap_or(b"-"))
        );
    }
    if let Some(mf) = m.max_forwards() {
        println!("  Max-Forwards: {mf}");
    }
    let routes = m.routes().count();
    if routes > 0 {
        println!("  Route entries: {routes}");
    }
    for c in m.contacts() {
        println!("  Contact: {}", s(c.uri.as_bytes()));
    }
    let unknown = m.headers().filter(|h| h.id == HeaderName::Other).count();
    println!(
        "  {} header lines ({unknown} passed through uninterpreted), body {} bytes",
        m.headers().count(),
        m.body().len()
    );
}
