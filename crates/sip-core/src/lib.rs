//! placeholder
pub mod net;
pub mod proxy;
pub mod transaction;
