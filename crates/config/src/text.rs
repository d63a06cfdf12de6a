//! Values written as text (durations, addresses, networks, URIs), parsed while serde walks the
//! tree so that `serde_path_to_error` names the key of any value that does not parse.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A value the configuration writes as a string.
pub(crate) trait FromText: Sized {
    /// What the value is, for "invalid {WHAT} \"text\": why".
    const WHAT: &'static str;

    /// Parses `text` (already trimmed), or says why not.
    fn from_text(text: &str) -> Result<Self, String>;
}

/// Deserializes a [`FromText`] value from a TOML string.
///
/// Integers and booleans are taken as their decimal text too: an environment override
/// `STG_NODE__ID=42` reaches the tree as the integer 42, and the override code cannot know
/// that this key wants a string.
#[derive(Debug)]
pub(crate) struct Parse<T>(pub(crate) T);

impl<'de, T: FromText> Deserialize<'de> for Parse<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TextVisitor(PhantomData))
            .map(Parse)
    }
}

struct TextVisitor<T>(PhantomData<T>);

impl<T: FromText> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} written as a string", T::WHAT)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        T::from_text(text.trim())
            .map_err(|why| E::custom(format!("invalid {} {text:?}: {why}", T::WHAT)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// The empty string means "none": `advertise = ""`, `listen = ""`, `certificate = ""`.
impl<T: FromText> FromText for Option<T> {
    const WHAT: &'static str = T::WHAT;

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "" => Ok(None),
            _ => T::from_text(text).map(Some),
        }
    }
}

impl FromText for String {
    const WHAT: &'static str = "string";

    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl FromText for PathBuf {
    const WHAT: &'static str = "path";

    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.into())
    }
}

impl FromText for Duration {
    const WHAT: &'static str = "duration";

    fn from_text(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text).map_err(|e| format!("{e}; write e.g. 500ms, 32s, 3m"))
    }
}

impl FromText for SocketAddr {
    const WHAT: &'static str = "socket address";

    fn from_text(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| "expected IP:port, e.g. 0.0.0.0:5060 or [::]:5060".to_owned())
    }
}

/// A network in CIDR form; a bare address is taken as a network of one.
impl FromText for IpNet {
    const WHAT: &'static str = "network";

    fn from_text(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<Self>() {
            // Host bits are dropped so the value prints as the network it matches.
            return Ok(net.trunc());
        }
        text.parse::<IpAddr>()
            .map(Self::from)
            .map_err(|_| "expected a CIDR network such as 10.0.0.0/8 or an address".to_owned())
    }
}

/// A DNS server: `IP:port`, or a bare IP meaning port 53.
#[derive(Debug)]
pub(crate) struct Nameserver(pub(crate) SocketAddr);

impl FromText for Nameserver {
    const WHAT: &'static str = "nameserver address";

    fn from_text(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Self(addr));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(SocketAddr::new(ip, 53)))
            .map_err(|_| "expected IP or IP:port, e.g. 10.0.0.2 or [2001:db8::53]:53".to_owned())
    }
}
