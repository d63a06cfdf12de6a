//! placeholder
pub mod proxy_protocol;
