//! placeholder
pub mod framer;
