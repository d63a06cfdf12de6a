//! Server transactions: RFC 3261 §17.2, the INVITE side as amended by RFC 6026 §7.1.

use std::collections::hash_map::Entry;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;

use super::timer::{Retransmit, Timer, TxRef};
use super::{
    Class, Ctx, Output, RequestKind, ServerMatch, ServerTxId, Step, Timings, Transactions, TxError,
    TxEvent, TxKey,
};

/// The state of a live server transaction (RFC 3261 §17.2, RFC 6026 §7.1).
///
/// An INVITE transaction goes through Proceeding, Completed, Confirmed and Accepted; a
/// non-INVITE one through Trying, Proceeding and Completed. The RFC's Terminated state is not
/// a variant: a terminated transaction is removed at once, [`TxEvent::ServerTerminated`] is
/// emitted and [`Transactions::server_state`] returns `None` from then on.
///
/// # INVITE server transaction (RFC 3261 Figure 7 as amended by RFC 6026)
///
/// Lines under a box are events handled without leaving the state.
///
/// ```text
///                       INVITE from network: pass to TU (the TU sends the 100)
///                                    |
///                                    v
///                         +-------------------+
///                         |    Proceeding     |----------------------------+
///                         +-------------------+   2xx from TU: send it     |
///                           1xx from TU: send it                           |
///                           INVITE: resend last 1xx                        v
///                                    |                          +-------------------+
///                                    | 300-699 from TU:         |     Accepted      |
///                                    | send it, set H (and G    +-------------------+
///                                    v if unreliable)             2xx from TU: send it
///                         +-------------------+                   INVITE: absorbed
///                         |     Completed     |                   ACK: to TU
///                         +-------------------+                   transport error:
///                           INVITE: resend final                    inform TU
///                           G fires: resend final,                         |
///                             G = min(2*G, T2)                             |
///                                    |                                     |
///                                    | ACK: absorbed                       |
///                                    v                                     |
///                         +-------------------+                            |
///                         |     Confirmed     |                            |
///                         +-------------------+                            |
///                           ACK, INVITE: absorbed                          |
///                                    |                                     |
///                                    | I fires (T4; zero if reliable)      | L fires (64*T1)
///                                    v                                     v
///                         +------------------------------------------------------+
///                         |                      Terminated                      |
///                         +------------------------------------------------------+
///
///   From Completed, H fires (64*T1): inform TU (ServerTimeout), Terminated.
///   From Proceeding, Completed and Confirmed, transport error: inform TU, Terminated.
/// ```
///
/// # Non-INVITE server transaction (RFC 3261 Figure 8)
///
/// ```text
///                  request from network: pass to TU
///                                  |
///                                  v
///                        +-------------------+
///                        |      Trying       |------------------------+
///                        +-------------------+  200-699 from TU:      |
///                          request: absorbed    send it               |
///                                  |                                  |
///                                  | 1xx from TU: send it             |
///                                  v                                  |
///                        +-------------------+                        |
///                        |    Proceeding     |                        |
///                        +-------------------+                        |
///                          1xx from TU: send it                       |
///                          request: resend last 1xx                   |
///                                  |                                  |
///                                  | 200-699 from TU: send it         |
///                                  v                                  |
///                        +-------------------+                        |
///                        |     Completed     |<-----------------------+
///                        +-------------------+
///                          request: resend final
///                                  |
///                                  | J fires (64*T1; zero if reliable)
///                                  v
///                        +-------------------+
///                        |    Terminated     |
///                        +-------------------+
///
///   From any state, transport error: inform TU, Terminated.
/// ```
///
/// Timer G doubles up to T2: with the defaults a non-2xx final goes out at 0, 0.5, 1.5, 3.5,
/// 7.5, 11.5, ... 31.5 s until the ACK, and timer H fires at 32 s. Trying and Proceeding
/// have no timer: they last until the TU answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Non-INVITE request received, no response sent yet; retransmissions are absorbed.
    Trying,
    /// Waiting for the TU's final; retransmissions get the last provisional, if any.
    Proceeding,
    /// A final was sent (non-2xx for INVITE). INVITE: retransmitted until the ACK (timers G,
    /// H); non-INVITE: re-sent for each retransmitted request (timer J).
    Completed,
    /// INVITE only: the ACK for the non-2xx final arrived; its retransmissions are absorbed
    /// (timer I).
    Confirmed,
    /// RFC 6026: INVITE only, a 2xx was sent; INVITE retransmissions are absorbed and ACKs go
    /// to the TU (timer L).
    Accepted,
}

/// One server transaction.
pub(super) struct ServerTx<D> {
    key: TxKey,
    reply_to: D,
    reliable: bool,
    machine: Machine,
}

/// The state machine for the transaction's kind; each state holds only its own data.
enum Machine {
    Invite(Invite),
    NonInvite(NonInvite),
}

/// RFC 3261 §17.2.1 / RFC 6026 §7.1 states.
enum Invite {
    /// `provisional` is the last 1xx sent, resent for each retransmitted INVITE.
    Proceeding {
        provisional: Option<Bytes>,
    },
    Completed {
        response: Bytes,
        g: Option<Retransmit>,
        h: Instant,
    },
    Confirmed {
        i: Instant,
    },
    Accepted {
        l: Instant,
    },
}

/// RFC 3261 §17.2.2 states.
enum NonInvite {
    Trying,
    Proceeding { provisional: Bytes },
    Completed { response: Bytes, j: Instant },
}

// === impl Transactions (server side) ===

impl<D: Clone + fmt::Debug> Transactions<D> {
    /// Matches a request from the network to its server transaction (RFC 3261 §17.2.3),
    /// creating one for a new INVITE, CANCEL or other non-ACK request.
    ///
    /// `key` comes from the request's top Via and CSeq method, except for an ACK, whose key
    /// carries `method = INVITE` so it meets the transaction it acknowledges. `reliable` and
    /// `reply_to` (where responses go, per RFC 3261 §18.2.2) are kept only for a new
    /// transaction; a retransmission is answered where the first copy was.
    ///
    /// Never fails: whatever the peer sent yields a [`ServerMatch`].
    pub fn handle_request(
        &mut self,
        key: TxKey,
        kind: RequestKind,
        reliable: bool,
        reply_to: D,
        now: Instant,
    ) -> ServerMatch {
        let id = match self.server_keys.entry(key) {
            Entry::Occupied(slot) => *slot.get(),
            // An ACK matching nothing is for a 2xx (a new branch) or stray: the TU's call.
            Entry::Vacant(_) if kind == RequestKind::Ack => return ServerMatch::PassToTu(None),
            Entry::Vacant(slot) => {
                let id = ServerTxId(self.next_server);
                // Ids are never reused: 2^64 transactions will not happen.
                self.next_server += 1;
                let key = slot.key().clone();
                slot.insert(id);
                // No timer: Proceeding and Trying wait for the TU (RFC 3261 §17.2.1, §17.2.2).
                let machine = if kind == RequestKind::Invite {
                    Machine::Invite(Invite::Proceeding { provisional: None })
                } else {
                    Machine::NonInvite(NonInvite::Trying)
                };
                self.servers.insert(
                    id,
                    ServerTx {
                        key,
                        reply_to,
                        reliable,
                        machine,
                    },
                );
                return ServerMatch::New(id);
            }
        };
        let Some((tx, mut cx)) = self.server_cx(id, now) else {
            // Unreachable while `server_keys` mirrors `servers`; dropping it is the safe answer.
            return ServerMatch::Retransmission;
        };
        let (matched, step) = if kind == RequestKind::Ack {
            tx.on_ack(id, &mut cx)
        } else {
            (tx.on_retransmission(&mut cx), Step::Stay)
        };
        self.finish_server(id, step);
        matched
    }

    /// Sends a response from the TU on server transaction `id` (RFC 3261 §17.2.1, §17.2.2,
    /// RFC 6026 §7.1) and runs the state machine. `status` is the response's status code.
    ///
    /// Allowed: any 1xx before a final; one final; further 2xx on an INVITE that sent a 2xx
    /// (the TU's own 2xx retransmissions, or a proxy forwarding other forks' 2xx). On a
    /// reliable transport a non-INVITE final ends the transaction at once (timer J is zero).
    ///
    /// # Errors
    ///
    /// [`TxError::InvalidStatus`] outside 100..=699, [`TxError::UnknownTransaction`] for a
    /// terminated or unknown id, [`TxError::WrongServerState`] when the state forbids the
    /// response. Nothing is sent on error.
    pub fn send_response(
        &mut self,
        id: ServerTxId,
        status: u16,
        response: Bytes,
        now: Instant,
    ) -> Result<(), TxError> {
        let class = Class::of(status).ok_or(TxError::InvalidStatus(status))?;
        let Some((tx, mut cx)) = self.server_cx(id, now) else {
            return Err(TxError::UnknownTransaction);
        };
        let step = tx.on_response(id, class, response, &mut cx)?;
        self.finish_server(id, step);
        Ok(())
    }

    /// Reports that sending a response failed for good (RFC 3261 §17.2.4, after any RFC 3263
    /// fail-over): queues [`TxEvent::ServerTransportError`], then, except in Accepted,
    /// [`TxEvent::ServerTerminated`]. An Accepted transaction stays until timer L (RFC 6026
    /// §7.1): it still absorbs INVITE retransmissions, and the TU may retry the 2xx.
    ///
    /// An unknown id is ignored: the error may come after the transaction ended.
    pub fn server_transport_error(&mut self, id: ServerTxId, now: Instant) {
        // No timer depends on it today; see `transport_error`.
        let _ = now;
        let event = TxEvent::ServerTransportError(id);
        match self.servers.get(&id).map(ServerTx::state) {
            None => {}
            Some(ServerState::Accepted) => self.output.push_back(Output::Event(event)),
            Some(_) => self.finish_server(id, Step::Fail(event)),
        }
    }

    /// The live server transaction with this key: e.g. for a CANCEL, the INVITE it cancels,
    /// looked up with the CANCEL's key and `method = INVITE` (RFC 3261 §9.2).
    pub fn find_server(&self, key: &TxKey) -> Option<ServerTxId> {
        self.server_keys.get(key).copied()
    }

    /// The state of a live server transaction; `None` once it has terminated.
    pub fn server_state(&self, id: ServerTxId) -> Option<ServerState> {
        self.servers.get(&id).map(ServerTx::state)
    }

    /// Fires `timer` of server transaction `id` if it is still armed for `at`.
    pub(super) fn fire_server(&mut self, id: ServerTxId, timer: Timer, at: Instant, now: Instant) {
        let Some((tx, mut cx)) = self.server_cx(id, now) else {
            return;
        };
        // A state change since the entry was queued cancelled this timer.
        if tx.deadline(timer) != Some(at) {
            return;
        }
        let step = tx.on_timer(id, timer, &mut cx);
        self.finish_server(id, step);
    }

    /// Lends the transaction and the shared parts out together, as disjoint borrows.
    fn server_cx(
        &mut self,
        id: ServerTxId,
        now: Instant,
    ) -> Option<(&mut ServerTx<D>, Ctx<'_, D>)> {
        let tx = self.servers.get_mut(&id)?;
        let cx = Ctx {
            now,
            timings: &self.timings,
            timers: &mut self.timers,
            output: &mut self.output,
        };
        Some((tx, cx))
    }

    /// Applies a state machine's step: on termination removes the transaction and queues its
    /// last events.
    fn finish_server(&mut self, id: ServerTxId, step: Step) {
        let cause = match step {
            Step::Stay => None,
            Step::Terminate => Some(None),
            Step::Fail(event) => Some(Some(event)),
        };
        if let Some(cause) = cause {
            if let Some(tx) = self.servers.remove(&id) {
                // Keys are unique among live server transactions, so this one maps to `id`.
                self.server_keys.remove(&tx.key);
                if let Some(event) = cause {
                    self.output.push_back(Output::Event(event));
                }
                self.output
                    .push_back(Output::Event(TxEvent::ServerTerminated(id)));
            }
        }
        self.tidy();
    }
}

// === impl ServerTx ===

impl<D: Clone> ServerTx<D> {
    fn state(&self) -> ServerState {
        match &self.machine {
            Machine::NonInvite(NonInvite::Trying) => ServerState::Trying,
            Machine::Invite(Invite::Proceeding { .. })
            | Machine::NonInvite(NonInvite::Proceeding { .. }) => ServerState::Proceeding,
            Machine::Invite(Invite::Completed { .. })
            | Machine::NonInvite(NonInvite::Completed { .. }) => ServerState::Completed,
            Machine::Invite(Invite::Confirmed { .. }) => ServerState::Confirmed,
            Machine::Invite(Invite::Accepted { .. }) => ServerState::Accepted,
        }
    }

    /// The deadline `timer` is armed for in the current state, if it runs at all.
    pub(super) fn deadline(&self, timer: Timer) -> Option<Instant> {
        match (&self.machine, timer) {
            (Machine::Invite(Invite::Completed { g, .. }), Timer::G) => g.map(|g| g.at),
            (Machine::Invite(Invite::Completed { h, .. }), Timer::H) => Some(*h),
            (Machine::Invite(Invite::Confirmed { i }), Timer::I) => Some(*i),
            (Machine::Invite(Invite::Accepted { l }), Timer::L) => Some(*l),
            (Machine::NonInvite(NonInvite::Completed { j, .. }), Timer::J) => Some(*j),
            _ => None,
        }
    }

    /// A retransmitted request: answered with the last response where the state says so.
    fn on_retransmission(&self, cx: &mut Ctx<'_, D>) -> ServerMatch {
        let resend = match &self.machine {
            Machine::Invite(Invite::Proceeding { provisional }) => provisional.as_ref(),
            Machine::Invite(Invite::Completed { response, .. }) => Some(response),
            // The ACK arrived (Confirmed), or the TU owns 2xx reliability (Accepted, RFC 6026
            // §7.1): re-sending here would duplicate the TU's own retransmissions.
            Machine::Invite(Invite::Confirmed { .. } | Invite::Accepted { .. }) => None,
            // RFC 3261 §17.2.2: Trying absorbs silently; the TU answers soon.
            Machine::NonInvite(NonInvite::Trying) => None,
            Machine::NonInvite(NonInvite::Proceeding { provisional }) => Some(provisional),
            Machine::NonInvite(NonInvite::Completed { response, .. }) => Some(response),
        };
        if let Some(bytes) = resend {
            cx.transmit(&self.reply_to, bytes.clone());
        }
        ServerMatch::Retransmission
    }

    /// An ACK whose key matched this transaction.
    fn on_ack(&mut self, id: ServerTxId, cx: &mut Ctx<'_, D>) -> (ServerMatch, Step) {
        let Machine::Invite(state) = &mut self.machine else {
            // An ACK never belongs to a non-INVITE transaction; only a caller building keys
            // inconsistently gets here. Let the TU see it, as for any unmatched ACK.
            return (ServerMatch::PassToTu(None), Step::Stay);
        };
        match state {
            // RFC 3261 §17.2.1: the ACK stops G and H; Confirmed absorbs its retransmissions.
            Invite::Completed { .. } => match Timings::linger(self.reliable, cx.timings.t4) {
                None => (ServerMatch::AckAbsorbed, Step::Terminate),
                Some(after) => {
                    let i = cx.arm(Timer::I, TxRef::Server(id), after);
                    *state = Invite::Confirmed { i };
                    (ServerMatch::AckAbsorbed, Step::Stay)
                }
            },
            Invite::Confirmed { .. } => (ServerMatch::AckAbsorbed, Step::Stay),
            // RFC 6026 §7.1: an ACK for the 2xx goes to the TU.
            Invite::Accepted { .. } => (ServerMatch::PassToTu(Some(id)), Step::Stay),
            // No final sent yet, so nothing to acknowledge: a confused or hostile peer. Not in
            // the figure; dropping it keeps it from reaching the next hop.
            Invite::Proceeding { .. } => (ServerMatch::AckAbsorbed, Step::Stay),
        }
    }

    /// A response from the TU.
    fn on_response(
        &mut self,
        id: ServerTxId,
        class: Class,
        response: Bytes,
        cx: &mut Ctx<'_, D>,
    ) -> Result<Step, TxError> {
        let me = TxRef::Server(id);
        let current = self.state();
        match &mut self.machine {
            Machine::Invite(state) => match state {
                Invite::Proceeding { provisional } => {
                    cx.transmit(&self.reply_to, response.clone());
                    match class {
                        Class::Provisional => *provisional = Some(response),
                        Class::Success => {
                            let l = cx.arm(Timer::L, me, cx.timings.t1x64);
                            *state = Invite::Accepted { l };
                        }
                        Class::Failure => {
                            let h = cx.arm(Timer::H, me, cx.timings.t1x64);
                            let g = (!self.reliable).then(|| cx.arm_retransmit(Timer::G, me));
                            *state = Invite::Completed { response, g, h };
                        }
                    }
                    Ok(Step::Stay)
                }
                // RFC 6026 §7.1: 2xx from the TU in Accepted go to the transport.
                Invite::Accepted { .. } if class == Class::Success => {
                    cx.transmit(&self.reply_to, response);
                    Ok(Step::Stay)
                }
                Invite::Accepted { .. } | Invite::Completed { .. } | Invite::Confirmed { .. } => {
                    Err(TxError::WrongServerState(current))
                }
            },
            Machine::NonInvite(state) => match state {
                NonInvite::Trying | NonInvite::Proceeding { .. } => {
                    cx.transmit(&self.reply_to, response.clone());
                    if class == Class::Provisional {
                        *state = NonInvite::Proceeding {
                            provisional: response,
                        };
                        return Ok(Step::Stay);
                    }
                    match Timings::linger(self.reliable, cx.timings.t1x64) {
                        None => Ok(Step::Terminate),
                        Some(after) => {
                            let j = cx.arm(Timer::J, me, after);
                            *state = NonInvite::Completed { response, j };
                            Ok(Step::Stay)
                        }
                    }
                }
                NonInvite::Completed { .. } => Err(TxError::WrongServerState(current)),
            },
        }
    }

    fn on_timer(&mut self, id: ServerTxId, timer: Timer, cx: &mut Ctx<'_, D>) -> Step {
        match (&mut self.machine, timer) {
            (
                Machine::Invite(Invite::Completed {
                    response,
                    g: Some(g),
                    h,
                }),
                Timer::G,
            ) => {
                // H is due too and ends the transaction in this same `handle_timeout`.
                if *h <= cx.now {
                    return Step::Stay;
                }
                cx.transmit(&self.reply_to, response.clone());
                // RFC 3261 §17.2.1: G doubles up to T2.
                let next = g.interval.saturating_mul(2).min(cx.timings.t2);
                cx.rearm_retransmit(g, Timer::G, TxRef::Server(id), next);
                Step::Stay
            }
            (Machine::Invite(Invite::Completed { .. }), Timer::H) => {
                Step::Fail(TxEvent::ServerTimeout(id))
            }
            (Machine::Invite(Invite::Confirmed { .. }), Timer::I)
            | (Machine::Invite(Invite::Accepted { .. }), Timer::L)
            | (Machine::NonInvite(NonInvite::Completed { .. }), Timer::J) => Step::Terminate,
            // The caller checked `deadline`, so no other pair is armed.
            _ => Step::Stay,
        }
    }
}
