//! placeholder
pub mod transaction;
