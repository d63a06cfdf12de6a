//! The access log: one line per request in the combined log format (Apache's and nginx's
//! `combined`, which log analysers and fail2ban's `apache-*` filters read), with the real
//! client address (after PROXY protocol), on the tracing target `access`.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::SystemTime;

/// One request as logged.
pub(crate) struct Entry<'a> {
    pub(crate) client: IpAddr,
    pub(crate) user: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) version: &'a str,
    pub(crate) status: u16,
    pub(crate) bytes: Option<u64>,
    pub(crate) referer: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
}

/// Writes `entry` to the access log.
pub(crate) fn write(entry: &Entry<'_>) {
    if tracing::enabled!(target: "access", tracing::Level::INFO) {
        let line = combined(entry, SystemTime::now());
        tracing::info!(target: "access", "{line}");
    }
}

/// `client - user [time] "request" status bytes "referer" "user-agent"`.
pub(crate) fn combined(e: &Entry<'_>, at: SystemTime) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "{} - {} [{}] \"{} {} {}\" {} ",
        e.client,
        e.user.map_or_else(|| "-".to_owned(), quoted_free),
        clf_time(at),
        quoted_free(e.method),
        quoted_free(e.target),
        e.version,
        e.status,
    );
    match e.bytes {
        Some(n) if n > 0 => {
            let _ = write!(s, "{n}");
        }
        _ => s.push('-'),
    }
    let _ = write!(
        s,
        " \"{}\" \"{}\"",
        e.referer.map_or_else(|| "-".to_owned(), quoted_free),
        e.user_agent.map_or_else(|| "-".to_owned(), quoted_free)
    );
    s
}

/// What a client sent, safe inside a quoted field of one line: `"` and `\` escaped,
/// control characters and non-ASCII as `\xHH` (a client must not forge log lines).
fn quoted_free(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
pub(crate) fn clf_time(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn combined_format_with_escapes() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136);
        assert_eq!(clf_time(at), "10/Oct/2000:13:55:36 +0000");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
        let e = Entry {
            client: "203.0.113.7".parse().unwrap(),
            user: None,
            method: "GET",
            target: "/a\"b\n",
            version: "HTTP/1.1",
            status: 404,
            bytes: Some(0),
            referer: None,
            user_agent: Some("curl/8 \"x\""),
        };
        assert_eq!(
            combined(&e, at),
            "203.0.113.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\\"b\\x0A HTTP/1.1\" 404 - \"-\" \"curl/8 \\\"x\\\"\""
        );
    }
}
