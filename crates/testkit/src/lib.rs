//! What two or more of stg's integration-test crates need, in one place: where the shared
//! corpora live (`dirs`), fresh temp dirs and free ports (`dirs`, `net`), child processes
//! that die with the test (`process`), a loopback-only network namespace to run a test or a
//! program in (`netns`), readers of a process's memory, CPU time and descriptors (`procfs`),
//! and small builders of SIP message text (`sip`); behind the `push-servers` feature, local
//! APNs, FCM and webhook look-alikes (`push_servers`).
//!
//! Test code only: std only (except `push_servers`: tokio, hyper, rustls), no dependency on
//! the crates under test, nothing `unsafe`.
//! Every child process is killed by its PID when its handle drops; every helper that waits
//! takes a bound.

#![forbid(unsafe_code)]

pub mod dirs;
pub mod net;
pub mod netns;
pub mod process;
pub mod procfs;
#[cfg(feature = "push-servers")]
pub mod push_servers;
pub mod sip;

pub use dirs::{conformance_dir, load_conformance, manifest, shared_dir, temp_dir};
pub use net::{free_port, free_port_on};
pub use netns::Netns;
pub use process::Process;
#[cfg(feature = "push-servers")]
pub use push_servers::{FakeApns, FakeFcm, FakeWebhook};
