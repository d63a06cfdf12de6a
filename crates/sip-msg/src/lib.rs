//! SIP syntax for stg: zero-copy parsing and serialization of SIP messages over
//! [`bytes::Bytes`] (RFC 3261 §7, §20, §25 with RFC 4475's torture cases and RFC 5118's
//! IPv6 references), and the stream framer for TCP/TLS/WebSocket transports.
//!
//! # How it fits
//! The transports in `stg-edge` hand each datagram or framed message to
//! [`Message::parse`]; the sans-IO proxy core in `stg-sip-core` reads the parsed fields
//! and asks this crate to write what a hop changes ([`Message::forward_request`],
//! [`Message::forward_response`], [`Message::response`]). No tokio, no I/O, no clock.
//!
//! # Invariants
//! - A [`Message`] is one `Bytes` plus offsets: header names, values and the body are
//!   views into it, and a proxy hop copies every header it does not change byte-exact.
//!   Parsing allocates once (the header index) beyond the input buffer.
//! - Everything a proxy routes on is validated in [`Message::parse`] (start line, Via,
//!   From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Contact, Route, Record-Route,
//!   Path), so the accessors never fail on a parsed message. Other headers stay opaque.
//! - No input makes the parser panic; malformed input gives a [`ParseError`] that says
//!   where and why, with the status code to answer (400 or 505) and a metrics label.
#![forbid(unsafe_code)]

pub mod framer;
#[doc(hidden)]
pub mod fuzz_support;
mod header;
mod message;
mod scan;
mod uri;
mod values;
mod write;

pub use header::HeaderName;
pub use message::{
    HeaderRef, Message, Method, ParseError, ParseErrorKind, StatusCode, MAX_HEADERS,
};
pub use uri::{Host, Params, SipUri, Uri, UriError};
pub use values::{parse_name_addr_list, parse_via_list, NameAddr, ValueError, Via};
pub use write::{error_response_for_unparsed, put_decimal, RequestEdit};
