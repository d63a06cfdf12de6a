//! Header names: the ones the proxy reads get an id; every other header is passed through
//! byte-exact, name spelling included (RFC 3261 §7.3: names are case-insensitive and some
//! have compact forms).

/// The headers stg interprets. Everything else is [`HeaderName::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// `Call-ID` / `i`.
    CallId,
    /// `Contact` / `m`.
    Contact,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Content-Type` / `c`.
    ContentType,
    /// `CSeq`.
    CSeq,
    /// `Date` (RFC 3261 §20.17: always GMT).
    Date,
    /// `Expires`.
    Expires,
    /// `From` / `f`.
    From,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Path` (RFC 3327).
    Path,
    /// `P-Asserted-Identity` (RFC 3325): never taken from outside.
    PAssertedIdentity,
    /// `Remote-Party-ID` (its pre-standard form): never taken from outside.
    RemotePartyId,
    /// `Proxy-Authorization` (stg's own digest challenges).
    ProxyAuthorization,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `Record-Route`.
    RecordRoute,
    /// `Require`.
    Require,
    /// `Route`.
    Route,
    /// `Server`: names the product that answered.
    Server,
    /// `Supported` / `k`.
    Supported,
    /// `To` / `t`.
    To,
    /// `User-Agent`: names the product that sent the request (or answered).
    UserAgent,
    /// `Via` / `v`.
    Via,
    /// `Warning`: carries the warning agent's host and often its product.
    Warning,
    /// Any other header, including extension headers.
    Other,
}

impl HeaderName {
    /// Classifies a header name as written (case-insensitive, compact forms included).
    pub fn from_bytes(name: &[u8]) -> Self {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'i' => Self::CallId,
                b'm' => Self::Contact,
                b'l' => Self::ContentLength,
                b'c' => Self::ContentType,
                b'f' => Self::From,
                b'k' => Self::Supported,
                b't' => Self::To,
                b'v' => Self::Via,
                _ => Self::Other,
            };
        }
        const TABLE: &[(&[u8], HeaderName)] = &[
            (b"via", HeaderName::Via),
            (b"from", HeaderName::From),
            (b"to", HeaderName::To),
            (b"call-id", HeaderName::CallId),
            (b"cseq", HeaderName::CSeq),
            (b"contact", HeaderName::Contact),
            (b"max-forwards", HeaderName::MaxForwards),
            (b"content-length", HeaderName::ContentLength),
            (b"route", HeaderName::Route),
            (b"record-route", HeaderName::RecordRoute),
            (b"content-type", HeaderName::ContentType),
            (b"expires", HeaderName::Expires),
            (b"date", HeaderName::Date),
            (b"path", HeaderName::Path),
            (b"proxy-require", HeaderName::ProxyRequire),
            (b"require", HeaderName::Require),
            (b"supported", HeaderName::Supported),
            (b"proxy-authorization", HeaderName::ProxyAuthorization),
            (b"p-asserted-identity", HeaderName::PAssertedIdentity),
            (b"remote-party-id", HeaderName::RemotePartyId),
            (b"server", HeaderName::Server),
            (b"user-agent", HeaderName::UserAgent),
            (b"warning", HeaderName::Warning),
        ];
        TABLE
            .iter()
            .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map_or(Self::Other, |&(_, id)| id)
    }

    /// The canonical long name, used when stg writes a header of its own.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallId => "Call-ID",
            Self::Contact => "Contact",
            Self::ContentLength => "Content-Length",
            Self::ContentType => "Content-Type",
            Self::CSeq => "CSeq",
            Self::Date => "Date",
            Self::Expires => "Expires",
            Self::From => "From",
            Self::MaxForwards => "Max-Forwards",
            Self::Path => "Path",
            Self::ProxyAuthorization => "Proxy-Authorization",
            Self::PAssertedIdentity => "P-Asserted-Identity",
            Self::RemotePartyId => "Remote-Party-ID",
            Self::ProxyRequire => "Proxy-Require",
            Self::RecordRoute => "Record-Route",
            Self::Require => "Require",
            Self::Route => "Route",
            Self::Server => "Server",
            Self::Supported => "Supported",
            Self::To => "To",
            Self::UserAgent => "User-Agent",
            Self::Via => "Via",
            Self::Warning => "Warning",
            Self::Other => "",
        }
    }

    /// Headers that may appear at most once (RFC 3261 §7.3 and Table 2): a second one with a
    /// different value makes the message malformed (RFC 4475 §3.3.8, §3.3.9).
    pub(crate) fn is_singleton(self) -> bool {
        matches!(
            self,
            Self::CallId
                | Self::CSeq
                | Self::From
                | Self::To
                | Self::MaxForwards
                | Self::ContentLength
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_compact_forms() {
        assert_eq!(HeaderName::from_bytes(b"ViA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
    }
}
