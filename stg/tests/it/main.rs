//! stg's integration tests: the real binary against real peers (SIPp, Kamailio, HAProxy,
//! dnsmasq, WebSocket clients), and the conformance corpora. One test binary (link time is
//! the budget on two cores); each module is one area.

mod attacks;
mod ban_cli;
mod cli;
mod cli_registrar;
mod dns;
mod guard_e2e;
mod guard_inputs;
// Shared helpers: not every test module uses every one of them.
#[allow(dead_code)]
mod harness;
mod kamailio;
mod lifecycle;
mod push_e2e;
mod registrar_e2e;
mod registrar_store;
mod review_udp_evidence;
mod sipp;
mod sipvicious;
mod torture;
mod transports;
mod uas;
mod web;
