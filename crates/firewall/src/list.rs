//! Reading the sets back from `nft -j list table` (JSON schema 1, as nft 1.0 prints it).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::script::{SET4, SET4_NETS, SET6, SET6_NETS};

/// One element of a banned set, as the kernel holds it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The address (/32, /128) or prefix.
    pub net: IpNet,
    /// The timeout it was added with; `None` for an element that never expires (added by
    /// hand without one).
    pub timeout: Option<Duration>,
    /// What is left of it, whole seconds rounded down as nft prints them; `None` as above.
    pub expires: Option<Duration>,
}

/// The elements of our four sets in `nft -j list table inet <table>` output; a `banned6`
/// element stands for the `/v6_prefix` it starts. Elements in a shape we never write (a range
/// that is no prefix, added by hand) become the prefixes that cover exactly the same
/// addresses; anything else unreadable is an error naming it.
pub(crate) fn parse(json: &str, v6_prefix: u8) -> Result<Vec<Element>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no top-level `nftables` array")?;
    let mut out = Vec::new();
    for item in items {
        let Some(set) = item.get("set") else {
            continue;
        };
        let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
        if ![SET4, SET6, SET4_NETS, SET6_NETS].contains(&name) {
            continue;
        }
        // The masked set's elements are the prefixes' first addresses.
        let len = (name == SET6).then_some(v6_prefix);
        let Some(elems) = set.get("elem").and_then(Value::as_array) else {
            continue; // An empty set has no `elem` at all.
        };
        for e in elems {
            element(e, len, &mut out).map_err(|why| format!("element {e}: {why}"))?;
        }
    }
    Ok(out)
}

/// One entry of `elem`: `"192.0.2.1"`, `{"prefix": ..}`, `{"range": ..}`, or any of those
/// wrapped as `{"elem": {"val": .., "timeout": s, "expires": s}}`.
fn element(e: &Value, len: Option<u8>, out: &mut Vec<Element>) -> Result<(), &'static str> {
    let (val, timeout, expires) = match e.get("elem") {
        Some(inner) => (
            inner.get("val").ok_or("no `val`")?,
            seconds(inner.get("timeout")),
            seconds(inner.get("expires")),
        ),
        None => (e, None, None),
    };
    // A permanent element has no `expires`; one with a timeout always has both.
    let expires = expires.or(timeout.map(|_| Duration::ZERO));
    for net in nets(val)? {
        let net = match len {
            Some(len) => IpNet::new(net.addr(), len).map_err(|_| "not an IPv6 address")?,
            None => net,
        };
        out.push(Element {
            net,
            timeout,
            expires,
        });
    }
    Ok(())
}

fn seconds(v: Option<&Value>) -> Option<Duration> {
    v.and_then(Value::as_u64).map(Duration::from_secs)
}

fn nets(val: &Value) -> Result<Vec<IpNet>, &'static str> {
    if let Some(s) = val.as_str() {
        let addr: IpAddr = s.parse().map_err(|_| "not an address")?;
        return Ok(vec![IpNet::from(addr)]);
    }
    if let Some(p) = val.get("prefix") {
        let addr: IpAddr = p
            .get("addr")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or("prefix without an address")?;
        let len = p
            .get("len")
            .and_then(Value::as_u64)
            .and_then(|l| u8::try_from(l).ok())
            .ok_or("prefix without a length")?;
        return IpNet::new(addr, len)
            .map(|n| vec![n])
            .map_err(|_| "prefix too long");
    }
    if let Some([a, b]) = val
        .get("range")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let a: IpAddr = a.as_str().and_then(|s| s.parse().ok()).ok_or("bad range")?;
        let b: IpAddr = b.as_str().and_then(|s| s.parse().ok()).ok_or("bad range")?;
        return match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                Ok(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect())
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                Ok(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect())
            }
            _ => Err("bad range"),
        };
    }
    Err("neither an address, a prefix nor a range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_nft_1_0_prints() {
        let json = r#"{"nftables": [
          {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "stg", "handle": 1}},
          {"set": {"family": "inet", "name": "banned4", "table": "stg", "type": "ipv4_addr",
                   "handle": 2, "flags": ["interval", "timeout"], "elem": [
              {"elem": {"val": "10.0.0.1", "timeout": 300, "expires": 299}},
              {"elem": {"val": {"prefix": {"addr": "10.1.0.0", "len": 16}}, "timeout": 60, "expires": 12}},
              "10.2.0.1",
              {"range": ["10.3.0.1", "10.3.0.2"]}
          ]}},
          {"set": {"family": "inet", "name": "banned6", "table": "stg", "type": "ipv6_addr",
                   "handle": 3, "flags": ["timeout"], "elem": [
              {"elem": {"val": "2001:db8::", "timeout": 60, "expires": 59}}
          ]}},
          {"set": {"family": "inet", "name": "banned6_nets", "table": "stg", "type": "ipv6_addr",
                   "handle": 6, "flags": ["interval", "timeout"]}},
          {"set": {"family": "inet", "name": "other", "table": "stg", "type": "ipv4_addr",
                   "handle": 4, "elem": ["10.9.9.9"]}},
          {"chain": {"family": "inet", "table": "stg", "name": "drop_banned", "handle": 5}}
        ]}"#;
        let got = parse(json, 64).unwrap();
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            got,
            vec![
                Element {
                    net: n("10.0.0.1/32"),
                    timeout: secs(300),
                    expires: secs(299)
                },
                Element {
                    net: n("10.1.0.0/16"),
                    timeout: secs(60),
                    expires: secs(12)
                },
                Element {
                    net: n("10.2.0.1/32"),
                    timeout: None,
                    expires: None
                },
                Element {
                    net: n("10.3.0.1/32"),
                    timeout: None,
                    expires: None
                },
                Element {
                    net: n("10.3.0.2/32"),
                    timeout: None,
                    expires: None
                },
                Element {
                    net: n("2001:db8::/64"),
                    timeout: secs(60),
                    expires: secs(59)
                },
            ]
        );
    }

    #[test]
    fn odd_output_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[]",
            "{\"nftables\": 3}",
            r#"{"nftables": [{"set": {"name": "banned4", "elem": [{"elem": {}}]}}]}"#,
            r#"{"nftables": [{"set": {"name": "banned4", "elem": [{"prefix": {"addr": "::", "len": 300}}]}}]}"#,
            r#"{"nftables": [{"set": {"name": "banned6", "elem": [{"range": ["::2", "::1"]}]}}]}"#,
            r#"{"nftables": [{"set": {"name": "banned6", "elem": [7]}}]}"#,
            r#"{"nftables": [{"set": {"name": "banned6", "elem": ["10.0.0.1"]}}]}"#,
        ] {
            assert!(parse(bad, 64).is_err(), "{bad} accepted");
        }
    }
}
