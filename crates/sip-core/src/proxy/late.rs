//! Calls to sleeping devices: push wake-up and late forking.
//!
//! A mobile app asleep has no connection, or one the phone will not read until it is woken.
//! A branch towards a binding that carries push parameters ([`Located::wake`]) is therefore
//! not the end of the story when it fails:
//!
//! - **Push.** The core asks the shell to push ([`Output::Push`]) when the branch's connection
//!   is gone (the send fails, the connection closes under a pending INVITE, the device's
//!   flow token no longer names a connection here), or when the device has not answered
//!   within the push timeout (`pn-timeout` in the contact, else [`PushPolicy::timeout`]). One
//!   push per device per call. A 180 does not stop a pending push; a final response or a
//!   CANCEL does.
//! - **Fork late.** A branch whose device was pushed and cannot be reached is *parked*: it
//!   holds the context open (a 408 or 503 from its dead connection does not end the call)
//!   until the device binds again or [`PushPolicy::call_fork_timeout`] (from the request's
//!   arrival) runs out, which ends the whole call with 408.
//! - **Device back.** The shell reports every new binding ([`Proxy::handle_bound`]): from its
//!   own registrar and from the other nodes sharing the store (Redis pub/sub). A binding of
//!   a device the call waits for (same binding key, i.e. `+sip.instance`) replaces the parked
//!   branch with a new one over the new connection and with the new contact's Request-URI;
//!   a binding of a device the call does not know yet gets a branch of its own.
//! - **iOS VoIP.** Apple requires an app woken by a VoIP push to show a call. When the caller
//!   cancels before such a device is back, the caller gets its 487 at once and the parked
//!   branch becomes a *ghost*: when the device binds, it is sent the INVITE and then the
//!   CANCEL, so the app can dismiss the call it had to show.
//!
//! Everything here is decided on inputs and time values; the shell does the pushing and tells
//! the outcome ([`Proxy::handle_pushed`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, Method, StatusCode};

use super::{bump, BranchSpec, BranchState, Output, Proxy};
use crate::net::Flow;

/// When and how long the core waits for sleeping devices (`[push]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushPolicy {
    /// No answer from a live branch after this: push (the contact's `pn-timeout` wins).
    pub timeout: Duration,
    /// How long a call may wait, from its arrival, for pushed devices to come back.
    pub call_fork_timeout: Duration,
    /// How long a message waits, from its arrival, for pushed devices before its sender is
    /// answered 202 and the devices' copies are kept ([`Output::Store`]).
    pub message_accept_timeout: Duration,
}

impl Default for PushPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            call_fork_timeout: Duration::from_secs(90),
            message_accept_timeout: Duration::from_secs(5),
        }
    }
}

/// The branch number of a message's accept timer in `late_timers` (the fork deadline is
/// `u32::MAX`; branches are far fewer than either).
pub(super) const MESSAGE_ACCEPT: u32 = u32::MAX - 1;

/// How a binding's device can be woken ([`Located::wake`](super::Located::wake)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// The contact's `pn-timeout`: push after this long without an answer.
    pub timeout: Option<Duration>,
    /// The push obliges the app to show the call (an iOS VoIP push): a call cancelled before
    /// the device is back is still delivered to it, as INVITE then CANCEL.
    pub deliver_cancel: bool,
}

/// Id of a push the shell sends for the core ([`Proxy::handle_pushed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PushId {
    pub(super) ctx: u64,
    pub(super) branch: u32,
}

/// A push to send ([`Output::Push`]).
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// The id to answer with.
    pub id: PushId,
    /// The AOR called (`user@host`, as in [`Output::Locate`]).
    pub aor: String,
    /// The binding's key in its AOR's record (the device).
    pub key: Bytes,
    /// The binding's contact URI: its push parameters say where and how to push.
    pub contact: Bytes,
    /// The request waiting for the device (INVITE or MESSAGE): caller, Call-ID, body.
    pub request: Message,
}

/// How a push went ([`Proxy::handle_pushed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The provider took it.
    Sent,
    /// It could not be sent (the provider refused it or is unreachable): a device that is not
    /// connected cannot be reached.
    Failed,
}

/// What a parked branch does when it is taken out of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unpark {
    /// Superseded by a branch on the device's new connection: not an answer.
    Silently,
    /// Ended, answering as if the device had said this.
    With(StatusCode),
}

/// The `Reason` of the CANCELs sent to the other devices when one answers (RFC 3326).
pub(super) const COMPLETED_ELSEWHERE: &[u8] = b"SIP;cause=200;text=\"Call completed elsewhere\"";

/// The least time a call waits for a device pushed now (when the fork timeout is longer).
const MIN_WAKE_WAIT: Duration = Duration::from_secs(30);

/// Most branches of one call, late ones included: a callee binding again and again while
/// the call waits makes no more.
const MAX_BRANCHES: usize = 2 * super::MAX_TARGETS;

/// The longest `Reason` value copied from a caller's CANCEL onto the CANCELs stg sends.
pub(super) const MAX_REASON_LEN: usize = 256;

/// The `pn-timeout` of a contact URI, in seconds (RFC 8599 does not define it; Flexisip and
/// the Linphone SDK use it).
pub fn pn_timeout(contact: &[u8]) -> Option<Duration> {
    let uri = contact.split(|&b| b == b'?').next().unwrap_or(contact);
    uri.split(|&b| b == b';').skip(1).find_map(|p| {
        let (name, value) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        };
        if !name.eq_ignore_ascii_case(b"pn-timeout") || value.is_empty() || value.len() > 6 {
            return None;
        }
        let secs = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
        Some(Duration::from_secs(secs))
    })
}

impl Proxy {
    /// A stream connection closed: every device branch waiting on it without a final answer
    /// is unreachable now (push, park), instead of after timer B.
    pub fn handle_flow_closed(&mut self, flow: Flow, now: Instant) {
        let Some(conn) = flow.conn else {
            return;
        };
        let Some(branches) = self.by_conn.remove(&conn) else {
            return;
        };
        for (ctx_id, b) in branches {
            let id = self
                .ctxs
                .get(&ctx_id)
                .and_then(|c| c.branches.get(b as usize))
                .filter(|br| br.flow.and_then(|f| f.conn) == Some(conn))
                .and_then(|br| match br.state {
                    BranchState::Sent(id) => Some(id),
                    _ => None,
                });
            if let Some(id) = id {
                // The transaction ends as a transport error: the branch fails over to
                // `unreachable`, which pushes and parks.
                self.tx.transport_error(id, now);
                self.pump(now);
            }
        }
        self.pump(now);
    }

    /// A device bound (or bound again) to `aor`: calls waiting for it get a branch over its
    /// new connection. Bindings of AORs nobody waits for cost one hash lookup.
    pub fn handle_bound(&mut self, aor: &str, binding: &super::Located, now: Instant) {
        let Some(ctx_ids) = self.late_by_aor.get(aor).cloned() else {
            return;
        };
        for ctx_id in ctx_ids {
            self.bound_for(ctx_id, binding, now);
        }
        self.pump(now);
    }

    fn bound_for(&mut self, ctx_id: u64, binding: &super::Located, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let key = &binding.key;
        let mine = |br: &super::Branch| br.key.as_ref() == Some(key);
        // The binding a live branch already uses (a refresh, or the store echoing this node's
        // own bind): nothing new.
        if ctx.branches.iter().any(|br| {
            mine(br)
                && matches!(br.state, BranchState::Sent(_) | BranchState::Resolving)
                && br.conn_token == binding.conn
        }) {
            return;
        }
        if ctx.branches.len() >= MAX_BRANCHES {
            bump(&mut self.stats.fork, "late_branch_capped");
            return;
        }
        // A message answered 202 (or taken by another device) is still this device's until
        // it takes it or its copy is kept: it goes out over the new connection too.
        let over = ctx.cancelled || (ctx.final_sent && !ctx.owes_message(key));
        let parked = ctx
            .branches
            .iter()
            .enumerate()
            .rev()
            .find(|(_, br)| mine(br) && matches!(br.state, BranchState::Parked))
            .map(|(b, br)| (b as u32, br.ghost, br.cancel_reason.clone()));
        // An iOS app pushed for this call (VoIP) that has not been sent anything since: it
        // must be shown the call even when the call is over.
        let owed = ctx.request.method() == Some(Method::Invite)
            && ctx.pushed.contains(key)
            && binding.wake.is_some_and(|w| w.deliver_cancel)
            && !ctx.branches.iter().any(|br| mine(br) && br.ghost);
        let (ghost, cancel_reason) = match parked {
            Some((b, ghost, reason)) => {
                if over && !ghost {
                    return;
                }
                self.unpark(ctx_id, b, Unpark::Silently, now);
                (ghost, reason)
            }
            // A device the call does not know yet, or one whose old branch still rings or
            // answered: a branch of its own while the call is open (if its old connection was
            // alive after all, the device refuses the second INVITE with 482, which is not an
            // answer; the first 2xx cancels the other).
            None if !over => (false, None),
            None if owed => (true, ctx.end_reason.clone()),
            None => return,
        };
        let Some((target, routes)) = self.binding_target(binding) else {
            return;
        };
        bump(&mut self.stats.fork, "late_branch");
        let spec = BranchSpec {
            request_uri: Some(binding.uri.clone()),
            located: true,
            routes,
            key: Some(key.clone()),
            wake: binding.wake,
            ghost,
            cancel_reason,
            conn_token: binding.conn.clone(),
            contact: Some(binding.uri.clone()),
        };
        self.add_branch(ctx_id, target, spec, now);
    }

    /// The shell's answer to an [`Output::Push`].
    pub fn handle_pushed(&mut self, id: PushId, outcome: PushOutcome, now: Instant) {
        match outcome {
            PushOutcome::Sent => self.push_sent(id.ctx, now),
            PushOutcome::Failed => {
                // A device that cannot be woken is not waited for, now or at timer B.
                if let Some(c) = self.ctxs.get_mut(&id.ctx) {
                    if let Some(k) = c
                        .branches
                        .get(id.branch as usize)
                        .and_then(|b| b.key.clone())
                    {
                        c.push_failed.push(k);
                    }
                }
                let parked = self
                    .ctxs
                    .get(&id.ctx)
                    .and_then(|c| c.branches.get(id.branch as usize))
                    .is_some_and(|br| matches!(br.state, BranchState::Parked));
                if parked {
                    self.unpark(id.ctx, id.branch, Unpark::With(StatusCode(480)), now);
                }
            }
        }
        self.pump(now);
    }

    /// The caller hears `110 Push sent` (as from Flexisip), once per call.
    fn push_sent(&mut self, ctx_id: u64, now: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        if ctx.told_pushed || ctx.final_sent || ctx.request.method() != Some(Method::Invite) {
            return;
        }
        ctx.told_pushed = true;
        let status = StatusCode(110);
        let resp = ctx
            .request
            .response(status, Some("Push sent"), None, Some(&ctx.top_via), &[]);
        let server = ctx.server;
        self.reply(server, status, resp, now);
    }

    /// The location answer for a call the PBX routed along a device's Path: the binding
    /// whose flow token is the Path's gives the branch its push parameters; none (the store
    /// failed, or the PBX's To is not the AOR the device registered) is the Path's flow
    /// alone, as before the lookup. The PBX's Request-URI is kept.
    pub(super) fn located_path(
        &mut self,
        ctx_id: u64,
        path_flow: Flow,
        targets: &[super::Located],
        now: Instant,
    ) {
        let mine = targets.iter().find(|t| {
            matches!(self.binding_target(t), Some((super::Target::Flow(f), _)) if f == path_flow)
        });
        let spec = match mine {
            Some(t) => BranchSpec {
                located: true,
                key: Some(t.key.clone()),
                wake: t.wake,
                conn_token: t.conn.clone(),
                contact: Some(t.uri.clone()),
                ..BranchSpec::default()
            },
            None => BranchSpec::default(),
        };
        self.add_branch(ctx_id, super::Target::Flow(path_flow), spec, now);
    }

    /// A binding whose device is not connected here (its flow token names no live
    /// connection of this process) but has push parameters: a branch born parked, pushed now.
    pub(super) fn add_asleep(&mut self, ctx_id: u64, spec: BranchSpec, now: Instant) {
        let deadline = now + 64 * self.tx.config().t1;
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let b = ctx.branches.len() as u32;
        ctx.branches.push(super::Branch::new(
            spec,
            crate::net::Side::Outside,
            super::DestPolicy::Upstream,
            deadline,
        ));
        if !self.unreachable(ctx_id, b, now) {
            self.branch_failed(ctx_id, b, StatusCode(480), now);
        }
    }

    /// Starts the push timer of a device branch just created.
    pub(super) fn arm_push_timer(&mut self, ctx_id: u64, b: u32, now: Instant) {
        let default = self.config.push.timeout;
        // A device's pn-timeout is bounded by timer C: beyond it the call is over anyway.
        let longest = self.config.timer_c;
        let Some(br) = self
            .ctxs
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(b as usize))
        else {
            return;
        };
        let Some(wake) = br.wake else {
            return;
        };
        if br.ghost {
            return;
        }
        let at = now + wake.timeout.unwrap_or(default).min(longest);
        br.push_at = Some(at);
        self.late_timers.insert((at, ctx_id, b));
    }

    /// Asks the shell to push the device of branch `b`, unless it was pushed for this call
    /// already. Returns whether the branch's device has been pushed (now or before).
    pub(super) fn push_branch(&mut self, ctx_id: u64, b: u32, now: Instant) -> bool {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return false;
        };
        let Some(br) = ctx.branches.get(b as usize) else {
            return false;
        };
        let (Some(key), Some(contact), Some(_)) = (br.key.clone(), br.contact.clone(), br.wake)
        else {
            return false;
        };
        if ctx.push_failed.contains(&key) {
            return false;
        }
        if ctx.pushed.contains(&key) {
            return true;
        }
        let Some(aor) = ctx.aor.clone() else {
            return false;
        };
        ctx.pushed.push(key.clone());
        let request = ctx.request.clone();
        self.enter_late(ctx_id, now);
        bump(&mut self.stats.fork, "push");
        self.out.push_back(Output::Push(Box::new(PushRequest {
            id: PushId {
                ctx: ctx_id,
                branch: b,
            },
            aor,
            key,
            contact,
            request,
        })));
        true
    }

    /// The call now waits for devices to come back: it is found by its AOR, and ends at the
    /// fork timeout at the latest.
    fn enter_late(&mut self, ctx_id: u64, now: Instant) {
        let fork_timeout = self.config.push.call_fork_timeout;
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        if ctx.late.is_some() {
            return;
        }
        // From the call's arrival, as Flexisip counts; but a device pushed late (a long
        // pn-timeout, a connection lost after a minute of ringing) gets a chance to wake.
        let deadline = (ctx.created + fork_timeout).max(now + fork_timeout.min(MIN_WAKE_WAIT));
        ctx.late = Some(deadline);
        if ctx.request.method() == Some(Method::Message) && !ctx.final_sent {
            let at = (ctx.created + self.config.push.message_accept_timeout).min(deadline);
            ctx.accept_at = Some(at);
            self.late_timers.insert((at, ctx_id, MESSAGE_ACCEPT));
        }
        if let Some(aor) = &ctx.aor {
            self.late_by_aor
                .entry(aor.clone())
                .or_default()
                .push(ctx_id);
        }
        self.late_timers.insert((deadline, ctx_id, u32::MAX));
    }

    /// Branch `b`'s device cannot be reached now. With push parameters, it is pushed (once)
    /// and the branch parked until the device is back; else the branch ends with `status`.
    /// Returns whether it was parked.
    pub(super) fn unreachable(&mut self, ctx_id: u64, b: u32, now: Instant) -> bool {
        if self.message_kept_later(ctx_id, b) {
            // The sender has its answer: the device is woken if it can be, and its copy kept.
            self.push_branch(ctx_id, b, now);
            self.keep_message(ctx_id, b);
            return false;
        }
        let open = self
            .ctxs
            .get(&ctx_id)
            .is_some_and(|c| !c.cancelled && !c.final_sent);
        if !open || !self.push_branch(ctx_id, b, now) {
            return false;
        }
        if let Some(br) = self
            .ctxs
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(b as usize))
        {
            if let BranchState::Sent(id) = br.state {
                self.by_client.remove(&id);
            }
            br.state = BranchState::Parked;
            if let Some(flow) = br.flow.take() {
                self.unindex_conns(ctx_id, &[flow]);
            }
        }
        true
    }

    /// Takes a parked branch out of the call.
    pub(super) fn unpark(&mut self, ctx_id: u64, b: u32, how: Unpark, now: Instant) {
        let Some(br) = self
            .ctxs
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(b as usize))
            .filter(|br| matches!(br.state, BranchState::Parked))
        else {
            return;
        };
        br.state = BranchState::Done;
        br.ghost = false;
        match how {
            Unpark::Silently => {}
            Unpark::With(status) => self.branch_failed(ctx_id, b, status, now),
        }
    }

    /// Push timers and fork deadlines that are due.
    pub(super) fn on_late_timers(&mut self, now: Instant) {
        while let Some(&(at, ctx_id, b)) = self.late_timers.first() {
            if at > now {
                break;
            }
            self.late_timers.remove(&(at, ctx_id, b));
            if b == u32::MAX {
                self.on_fork_timeout(ctx_id, now);
            } else if b == MESSAGE_ACCEPT {
                self.on_message_accept(ctx_id, now);
            } else {
                self.on_push_timer(ctx_id, b, now);
            }
            self.pump(now);
        }
    }

    /// No answer from a live device branch within the push timeout: push. The branch keeps
    /// ringing where it is; the device may also come back on a new connection.
    fn on_push_timer(&mut self, ctx_id: u64, b: u32, now: Instant) {
        let due = self.ctxs.get(&ctx_id).is_some_and(|c| {
            !c.cancelled
                && !c.final_sent
                && c.branches
                    .get(b as usize)
                    .is_some_and(|br| matches!(br.state, BranchState::Sent(_)))
        });
        if due {
            self.push_branch(ctx_id, b, now);
        }
    }

    /// `call_fork_timeout`: the devices did not come back in time. The call ends with 408
    /// (RFC 3261 §16.8, as timer C would): live branches are cancelled, parked ones dropped.
    fn on_fork_timeout(&mut self, ctx_id: u64, now: Instant) {
        if self.ctxs.contains_key(&ctx_id) {
            bump(&mut self.stats.fork, "fork_timeout");
        }
        self.time_out(ctx_id, true, Unpark::With(StatusCode::REQUEST_TIMEOUT), now);
    }

    /// Forgets the late-fork indexes of a context that ends.
    pub(super) fn forget_late(&mut self, ctx_id: u64, aor: Option<&str>) {
        if let Some(aor) = aor {
            if let Some(v) = self.late_by_aor.get_mut(aor) {
                v.retain(|&c| c != ctx_id);
                if v.is_empty() {
                    self.late_by_aor.remove(aor);
                }
            }
        }
    }

    /// Indexes a device branch by the connection it was sent on (for
    /// [`Self::handle_flow_closed`]).
    pub(super) fn index_conn(&mut self, ctx_id: u64, b: u32, flow: Flow) {
        if let Some(conn) = flow.conn {
            self.by_conn.entry(conn).or_default().push((ctx_id, b));
        }
    }

    /// Removes a context's device branches from the connection index.
    pub(super) fn unindex_conns(&mut self, ctx_id: u64, flows: &[Flow]) {
        for f in flows {
            let Some(conn) = f.conn else { continue };
            if let Some(v) = self.by_conn.get_mut(&conn) {
                v.retain(|&(c, _)| c != ctx_id);
                if v.is_empty() {
                    self.by_conn.remove(&conn);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pn_timeout_is_read_from_the_contact() {
        assert_eq!(
            pn_timeout(b"sip:a@1.2.3.4;pn-provider=fcm;pn-timeout=0;transport=tls"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            pn_timeout(b"sip:a@h;PN-TIMEOUT=12"),
            Some(Duration::from_secs(12))
        );
        assert_eq!(pn_timeout(b"sip:a@h;pn-timeout=x"), None);
        assert_eq!(pn_timeout(b"sip:a@h;pn-timeout=99999999"), None);
        assert_eq!(pn_timeout(b"sip:a@h?x=1;pn-timeout=3"), None);
        assert_eq!(pn_timeout(b"sip:a@h"), None);
    }
}
