//! Text messages to sleeping devices: accept, keep, deliver later.
//!
//! A MESSAGE for a device that is asleep goes the way of a call at first ([`super::late`]):
//! the device is pushed and its branch parked. A sender cannot wait days for its answer, so
//! after [`PushPolicy::message_accept_timeout`](super::PushPolicy) from the arrival, a
//! message still waiting is answered `202 Accepted` and handed to the shell to keep
//! ([`Output::Store`]), once per device that has not taken it. The same happens to a
//! device that could not be reached after the sender was answered (another device said
//! 2xx, or the 202 went): its copy is kept rather than lost.
//!
//! The shell keeps messages per device (the configured store, so they survive a restart)
//! and, when the device binds again on a connection of this node, hands them back one at a
//! time in the order they were kept ([`Proxy::deliver`]). A delivery is a context with no
//! server transaction: its one branch goes to the device's connection, and its final status
//! goes to the shell ([`Output::Delivered`]), which forgets the message or keeps it for the
//! device's next binding. A delivery never pushes (the device just bound).

use std::time::Instant;

use bytes::Bytes;
use stg_sip_msg::{Message, Method, StatusCode};

use super::{bump, BranchSpec, BranchState, Inbound, Output, Proxy, ReplyTo, Target};
use crate::net::{Flow, ListenerId, Side, Transport};

/// The shell's id of one delivery ([`Proxy::deliver`], [`Output::Delivered`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryId(pub u64);

/// A message to keep for a device ([`Output::Store`]).
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// The AOR it was sent to (`user@host`).
    pub aor: String,
    /// The device: the binding's key in its AOR's record.
    pub key: Bytes,
    /// The request as it arrived from the sender.
    pub request: Message,
}

/// Where a delivery "comes from": no socket. Its answers go to the shell, never on a flow.
fn nowhere() -> Inbound {
    Inbound {
        flow: Flow {
            listener: ListenerId(0),
            transport: Transport::Udp,
            remote: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            conn: None,
        },
        side: Side::Inside,
    }
}

impl super::Ctx {
    /// Whether this is a message the device `key` has neither taken nor had kept for it: it
    /// may still go out to the device after its sender was answered.
    pub(super) fn owes_message(&self, key: &Bytes) -> bool {
        self.request.method() == Some(Method::Message)
            && !self.stored.contains(key)
            && !self.took.contains(key)
    }
}

impl Proxy {
    /// Delivers a kept message (`request`, as it arrived from its sender) to the device of
    /// `binding`, which just bound on a connection of this node. The outcome comes back as
    /// [`Output::Delivered`] with `id`: 2xx when the device took it, 480 when it is not
    /// connected here (nothing was sent), the device's or a timeout's status otherwise.
    pub fn deliver(
        &mut self,
        id: DeliveryId,
        request: Bytes,
        binding: &super::Located,
        now: Instant,
    ) {
        let undeliverable = |this: &mut Self, status: StatusCode| {
            this.out.push_back(Output::Delivered { id, status });
        };
        let m = match Message::parse(request) {
            Ok(m) if m.method() == Some(Method::Message) => m,
            _ => return undeliverable(self, StatusCode::BAD_REQUEST),
        };
        let Some(top_via) = m.top_via().map(|v| Bytes::copy_from_slice(v.raw)) else {
            return undeliverable(self, StatusCode::BAD_REQUEST);
        };
        let inbound = nowhere();
        let routing = match self.check_request(&m, inbound) {
            Ok(r) => r,
            Err(rejection) => return undeliverable(self, rejection.status),
        };
        // Only over this node's own connection to the device: a node that merely heard of the
        // binding (another node's, through the store) leaves the message to that node.
        let Some((Target::Flow(flow), _)) = self.binding_target(binding) else {
            return undeliverable(self, StatusCode(480));
        };
        bump(&mut self.stats.fork, "message_delivery");
        let plan = super::Plan {
            pop_routes: routing.pop_routes,
            record_route: false,
            request_uri: None,
            append_route: None,
            remove_last_route: false,
            max_forwards: m.max_forwards().map_or(70, |n| n.saturating_sub(1)),
            loop_hash: routing.loop_hash,
        };
        let ctx_id = self.new_ctx(
            ReplyTo::Stored(id),
            inbound,
            inbound.flow,
            m,
            top_via,
            plan,
            now,
        );
        let spec = BranchSpec {
            request_uri: Some(binding.uri.clone()),
            located: true,
            key: Some(binding.key.clone()),
            conn_token: binding.conn.clone(),
            contact: Some(binding.uri.clone()),
            ..BranchSpec::default()
        };
        self.add_branch(ctx_id, Target::Flow(flow), spec, now);
        self.pump(now);
    }

    /// `message_accept_timeout`: the sender of a message still waiting for pushed devices is
    /// answered 202, and each parked device's copy is kept.
    pub(super) fn on_message_accept(&mut self, ctx_id: u64, now: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        ctx.accept_at = None;
        if ctx.final_sent || ctx.cancelled {
            return;
        }
        let parked: Vec<u32> = ctx
            .branches
            .iter()
            .enumerate()
            .filter(|(_, br)| matches!(br.state, BranchState::Parked))
            .map(|(i, _)| i as u32)
            .collect();
        ctx.final_sent = true;
        let status = StatusCode(202);
        let resp = ctx
            .request
            .response(status, None, Some(&ctx.to_tag), Some(&ctx.top_via), &[]);
        let server = ctx.server;
        bump(&mut self.stats.fork, "message_accepted");
        self.reply(server, status, resp, now);
        for b in parked {
            self.keep_message(ctx_id, b);
            self.unpark(ctx_id, b, super::late::Unpark::Silently, now);
        }
        self.maybe_finish(ctx_id, now);
    }

    /// Whether branch `b` carries a message whose sender has its answer already, to a device
    /// that can be woken: its copy is kept when the device cannot take it now.
    pub(super) fn message_kept_later(&self, ctx_id: u64, b: u32) -> bool {
        self.ctxs.get(&ctx_id).is_some_and(|c| {
            c.request.method() == Some(Method::Message)
                && c.final_sent
                && matches!(c.server, ReplyTo::Server(_))
                && c.branches
                    .get(b as usize)
                    .is_some_and(|br| br.key.is_some() && br.wake.is_some())
        })
    }

    /// Hands branch `b`'s device's copy of the message to the shell to keep (once per device).
    pub(super) fn keep_message(&mut self, ctx_id: u64, b: u32) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let (Some(aor), Some(key)) = (
            ctx.aor.clone(),
            ctx.branches.get(b as usize).and_then(|br| br.key.clone()),
        ) else {
            return;
        };
        // Kept once; never for a device that took it, nor while another branch of the same
        // device (its new connection) may still deliver it live.
        let live_elsewhere = ctx.branches.iter().enumerate().any(|(i, br)| {
            i as u32 != b
                && br.key.as_ref() == Some(&key)
                && matches!(br.state, BranchState::Sent(_) | BranchState::Resolving)
        });
        if !ctx.owes_message(&key) || live_elsewhere {
            return;
        }
        ctx.stored.push(key.clone());
        bump(&mut self.stats.fork, "message_stored");
        self.out.push_back(Output::Store(Box::new(StoredMessage {
            aor,
            key,
            request: ctx.request.clone(),
        })));
    }
}
