//! Client transactions: RFC 3261 §17.1, the INVITE side as amended by RFC 6026 §7.2.

use std::collections::hash_map::Entry;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{Retransmit, Timer, TxRef};
use super::{
    Class, ClientMatch, ClientTxId, Ctx, Output, RequestKind, Step, Timings, Transactions, TxError,
    TxEvent, TxKey,
};

/// The state of a live client transaction (RFC 3261 §17.1, RFC 6026 §7.2).
///
/// An INVITE transaction goes through Calling, Proceeding, Completed and Accepted; a
/// non-INVITE one through Trying, Proceeding and Completed. The RFC's Terminated state is not
/// a variant: a terminated transaction is removed at once (RFC 3261 §17.1.1.2: "destroyed the
/// instant it enters the Terminated state"), [`TxEvent::ClientTerminated`] is emitted and
/// [`Transactions::client_state`] returns `None` from then on.
///
/// # INVITE client transaction (RFC 3261 Figure 5 as amended by RFC 6026)
///
/// Lines under a box are events handled without leaving the state.
///
/// ```text
///                  INVITE from TU: send it, set B (and A if unreliable)
///                                   |
///                                   v
///                         +-------------------+
///                         |      Calling      |-----------------------------+
///                         +-------------------+      2xx: to TU             |
///                           A fires: resend, A = 2*A                        |
///                            |              |                               |
///                 1xx: to TU |              | 300-699: to TU,               |
///                            v              | send the TU's ACK             v
///          +-------------------+            |                 +-------------------+
///          |    Proceeding     |------------|---------------->|     Accepted      |
///          +-------------------+   2xx: to TU                 +-------------------+
///            1xx: to TU                     |                   2xx: to TU
///                            |              |                   1xx, 300-699: absorbed
///            300-699: to TU, |              |                               |
///            send TU's ACK   v              v                               |
///                         +-------------------+                             |
///                         |     Completed     |                             |
///                         +-------------------+                             |
///                           300-699: resend ACK                             |
///                           1xx: absorbed                                   |
///                                   |                                       |
///                                   | D fires (32 s; zero if reliable)      | M fires (64*T1)
///                                   v                                       v
///                         +-------------------------------------------------------+
///                         |                      Terminated                       |
///                         +-------------------------------------------------------+
///
///   From Calling, B fires (64*T1): inform TU (ClientTimeout), Terminated.
///   From any state, transport error: inform TU (ClientTransportError), Terminated.
/// ```
///
/// # Non-INVITE client transaction (RFC 3261 Figure 6)
///
/// ```text
///                 request from TU: send it, set F (and E if unreliable)
///                                  |
///                                  v
///                        +-------------------+
///                        |      Trying       |------------------------+
///                        +-------------------+   200-699: to TU       |
///                          E fires: resend, E = min(2*E, T2)          |
///                                  |                                  |
///                                  | 1xx: to TU                       |
///                                  v                                  |
///                        +-------------------+                        |
///                        |    Proceeding     |                        |
///                        +-------------------+                        |
///                          1xx: to TU                                 |
///                          E fires: resend, E = T2                    |
///                                  |                                  |
///                                  | 200-699: to TU                   |
///                                  v                                  |
///                        +-------------------+                        |
///                        |     Completed     |<-----------------------+
///                        +-------------------+
///                          any response: absorbed
///                                  |
///                                  | K fires (T4; zero if reliable)
///                                  v
///                        +-------------------+
///                        |    Terminated     |
///                        +-------------------+
///
///   From Trying and Proceeding, F fires (64*T1): inform TU (ClientTimeout), Terminated.
///   From any state, transport error: inform TU (ClientTransportError), Terminated.
/// ```
///
/// Timer A doubles without a cap (RFC 3261 §17.1.1.2): with the default T1 the INVITE goes
/// out at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and timer B fires at 32 s. INVITE Proceeding
/// has no timer: a proxy's timer C lives above this layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// INVITE sent, no response yet (timers A and B).
    Calling,
    /// Non-INVITE request sent, no response yet (timers E and F).
    Trying,
    /// A provisional response arrived. INVITE: no timer; non-INVITE: timers E and F.
    Proceeding,
    /// A final response arrived (non-2xx for INVITE); its retransmissions are absorbed, and
    /// for INVITE answered with the ACK (timer D or K).
    Completed,
    /// RFC 6026: an INVITE got a 2xx; further 2xx go to the TU (timer M).
    Accepted,
}

/// One client transaction.
pub(super) struct ClientTx<D> {
    key: TxKey,
    dest: D,
    reliable: bool,
    machine: Machine,
}

/// The state machine for the transaction's kind; each state holds only its own data.
enum Machine {
    Invite(Invite),
    NonInvite(NonInvite),
}

/// RFC 3261 §17.1.1 / RFC 6026 §7.2 states.
enum Invite {
    /// The request is kept only here, where timer A resends it.
    Calling {
        request: Bytes,
        a: Option<Retransmit>,
        b: Instant,
    },
    Proceeding,
    /// `ack` is `None` until the TU hands it over with [`Transactions::set_ack`].
    Completed {
        ack: Option<Bytes>,
        d: Instant,
    },
    Accepted {
        m: Instant,
    },
}

/// RFC 3261 §17.1.2 states.
enum NonInvite {
    Trying(Sending),
    Proceeding(Sending),
    Completed { k: Instant },
}

/// What Trying and Proceeding share: the request timer E resends, and the deadline of F.
#[derive(Clone)]
struct Sending {
    request: Bytes,
    e: Option<Retransmit>,
    f: Instant,
}

// === impl Transactions (client side) ===

impl<D: Clone + fmt::Debug> Transactions<D> {
    /// Starts a client transaction for `request` and queues it for sending to `dest`
    /// (RFC 3261 §17.1.1.2, §17.1.2.2).
    ///
    /// `key` is built from the Via the TU put on top of `request` and its CSeq method.
    /// `kind` is [`RequestKind::Invite`] for the INVITE machine, [`RequestKind::Cancel`] or
    /// [`RequestKind::Other`] for the non-INVITE one. `reliable` is true for TCP, TLS and WS:
    /// then the request is never retransmitted.
    ///
    /// # Errors
    ///
    /// [`TxError::AckTransaction`] for an ACK, [`TxError::DuplicateKey`] if a live client
    /// transaction already has `key`.
    pub fn start_client(
        &mut self,
        key: TxKey,
        kind: RequestKind,
        reliable: bool,
        dest: D,
        request: Bytes,
        now: Instant,
    ) -> Result<ClientTxId, TxError> {
        if kind == RequestKind::Ack {
            return Err(TxError::AckTransaction);
        }
        let id = ClientTxId(self.next_client);
        let key = match self.client_keys.entry(key) {
            Entry::Occupied(_) => return Err(TxError::DuplicateKey),
            Entry::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(id);
                key
            }
        };
        // Ids are never reused: 2^64 transactions will not happen.
        self.next_client += 1;

        let me = TxRef::Client(id);
        let mut cx = Ctx {
            now,
            timings: &self.timings,
            timers: &mut self.timers,
            output: &mut self.output,
        };
        cx.transmit(&dest, request.clone());
        let lifetime = cx.timings.t1x64;
        let machine = if kind == RequestKind::Invite {
            let a = (!reliable).then(|| cx.arm_retransmit(Timer::A, me));
            let b = cx.arm(Timer::B, me, lifetime);
            Machine::Invite(Invite::Calling { request, a, b })
        } else {
            let e = (!reliable).then(|| cx.arm_retransmit(Timer::E, me));
            let f = cx.arm(Timer::F, me, lifetime);
            Machine::NonInvite(NonInvite::Trying(Sending { request, e, f }))
        };
        self.clients.insert(
            id,
            ClientTx {
                key,
                dest,
                reliable,
                machine,
            },
        );
        self.tidy();
        Ok(id)
    }

    /// Matches a response from the network to its client transaction (RFC 3261 §17.1.3) and
    /// runs the state machine.
    ///
    /// `key` comes from the response's top Via (our own) and CSeq method; `status` from its
    /// status line. May queue an ACK retransmission and, for a final on a reliable non-INVITE
    /// transaction, the `ClientTerminated` event (timer K is zero): handle the returned
    /// [`ClientMatch::Pass`] first, it stays valid to act on.
    pub fn handle_response(&mut self, key: &TxKey, status: u16, now: Instant) -> ClientMatch {
        let Some(class) = Class::of(status) else {
            return ClientMatch::NoMatch;
        };
        let Some(&id) = self.client_keys.get(key) else {
            return ClientMatch::NoMatch;
        };
        let Some((tx, mut cx)) = self.client_cx(id, now) else {
            // Unreachable while `client_keys` mirrors `clients`; a stray is the safe answer.
            return ClientMatch::NoMatch;
        };
        let (matched, step) = tx.on_response(id, class, &mut cx);
        self.finish_client(id, step);
        matched
    }

    /// Hands over the ACK for the non-2xx final that returned [`ClientMatch::Pass`] with
    /// `needs_ack: true` (RFC 3261 §17.1.1.3). It is queued for sending now and re-sent for
    /// each retransmission of that final until timer D fires; on a reliable transport the
    /// transaction then terminates at once (timer D is zero).
    ///
    /// # Errors
    ///
    /// [`TxError::UnknownTransaction`] if the transaction is gone (e.g. a reliable one whose
    /// zero timer D already fired), [`TxError::WrongClientState`] unless it is an INVITE
    /// transaction in Completed still waiting for its ACK.
    pub fn set_ack(&mut self, id: ClientTxId, ack: Bytes, now: Instant) -> Result<(), TxError> {
        let Some((tx, mut cx)) = self.client_cx(id, now) else {
            return Err(TxError::UnknownTransaction);
        };
        let step = tx.on_ack(ack, &mut cx)?;
        self.finish_client(id, step);
        Ok(())
    }

    /// Reports that sending for this transaction failed (RFC 3261 §17.1.4): it terminates,
    /// queueing [`TxEvent::ClientTransportError`] then [`TxEvent::ClientTerminated`].
    ///
    /// An unknown id is ignored: the error may come after the transaction ended.
    pub fn transport_error(&mut self, id: ClientTxId, now: Instant) {
        // No timer depends on it today; the time is taken like every other input's so that a
        // later policy (e.g. RFC 3263 fail-over windows) needs no signature change.
        let _ = now;
        self.finish_client(id, Step::Fail(TxEvent::ClientTransportError(id)));
    }

    /// The live client transaction with this key, if any.
    pub fn find_client(&self, key: &TxKey) -> Option<ClientTxId> {
        self.client_keys.get(key).copied()
    }

    /// The state of a live client transaction; `None` once it has terminated.
    pub fn client_state(&self, id: ClientTxId) -> Option<ClientState> {
        self.clients.get(&id).map(ClientTx::state)
    }

    /// Where a live client transaction sends its request.
    pub fn client_dest(&self, id: ClientTxId) -> Option<&D> {
        self.clients.get(&id).map(|tx| &tx.dest)
    }

    /// Fires `timer` of client transaction `id` if it is still armed for `at`.
    pub(super) fn fire_client(&mut self, id: ClientTxId, timer: Timer, at: Instant, now: Instant) {
        let Some((tx, mut cx)) = self.client_cx(id, now) else {
            return;
        };
        // A state change since the entry was queued cancelled this timer.
        if tx.deadline(timer) != Some(at) {
            return;
        }
        let step = tx.on_timer(id, timer, &mut cx);
        self.finish_client(id, step);
    }

    /// Lends the transaction and the shared parts out together, as disjoint borrows.
    fn client_cx(
        &mut self,
        id: ClientTxId,
        now: Instant,
    ) -> Option<(&mut ClientTx<D>, Ctx<'_, D>)> {
        let tx = self.clients.get_mut(&id)?;
        let cx = Ctx {
            now,
            timings: &self.timings,
            timers: &mut self.timers,
            output: &mut self.output,
        };
        Some((tx, cx))
    }

    /// Applies a state machine's step: on termination removes the transaction (RFC 3261
    /// §17.1.1.2: destroyed the instant it is Terminated) and queues its last events.
    fn finish_client(&mut self, id: ClientTxId, step: Step) {
        let cause = match step {
            Step::Stay => None,
            Step::Terminate => Some(None),
            Step::Fail(event) => Some(Some(event)),
        };
        if let Some(cause) = cause {
            if let Some(tx) = self.clients.remove(&id) {
                // Keys are unique among live client transactions, so this one maps to `id`.
                self.client_keys.remove(&tx.key);
                if let Some(event) = cause {
                    self.output.push_back(Output::Event(event));
                }
                self.output
                    .push_back(Output::Event(TxEvent::ClientTerminated(id)));
            }
        }
        self.tidy();
    }
}

// === impl ClientTx ===

impl<D: Clone> ClientTx<D> {
    fn state(&self) -> ClientState {
        match &self.machine {
            Machine::Invite(Invite::Calling { .. }) => ClientState::Calling,
            Machine::Invite(Invite::Proceeding) | Machine::NonInvite(NonInvite::Proceeding(_)) => {
                ClientState::Proceeding
            }
            Machine::Invite(Invite::Completed { .. })
            | Machine::NonInvite(NonInvite::Completed { .. }) => ClientState::Completed,
            Machine::Invite(Invite::Accepted { .. }) => ClientState::Accepted,
            Machine::NonInvite(NonInvite::Trying(_)) => ClientState::Trying,
        }
    }

    /// The deadline `timer` is armed for in the current state, if it runs at all.
    pub(super) fn deadline(&self, timer: Timer) -> Option<Instant> {
        match (&self.machine, timer) {
            (Machine::Invite(Invite::Calling { a, .. }), Timer::A) => a.map(|a| a.at),
            (Machine::Invite(Invite::Calling { b, .. }), Timer::B) => Some(*b),
            (Machine::Invite(Invite::Completed { d, .. }), Timer::D) => Some(*d),
            (Machine::Invite(Invite::Accepted { m }), Timer::M) => Some(*m),
            (Machine::NonInvite(NonInvite::Trying(s) | NonInvite::Proceeding(s)), Timer::E) => {
                s.e.map(|e| e.at)
            }
            (Machine::NonInvite(NonInvite::Trying(s) | NonInvite::Proceeding(s)), Timer::F) => {
                Some(s.f)
            }
            (Machine::NonInvite(NonInvite::Completed { k }), Timer::K) => Some(*k),
            _ => None,
        }
    }

    fn on_response(
        &mut self,
        id: ClientTxId,
        class: Class,
        cx: &mut Ctx<'_, D>,
    ) -> (ClientMatch, Step) {
        let me = TxRef::Client(id);
        let pass = ClientMatch::Pass {
            id,
            needs_ack: false,
        };
        let stay = |m| (m, Step::Stay);
        match &mut self.machine {
            Machine::Invite(state) => match class {
                // A provisional cancels A and B (RFC 3261 §17.1.1.2): from here the wait for
                // a final is the TU's business (a proxy's timer C).
                Class::Provisional => match state {
                    Invite::Calling { .. } | Invite::Proceeding => {
                        *state = Invite::Proceeding;
                        stay(pass)
                    }
                    // Late or reordered after a final: nothing the TU can use.
                    Invite::Completed { .. } | Invite::Accepted { .. } => {
                        stay(ClientMatch::Absorbed)
                    }
                },
                Class::Success => match state {
                    Invite::Calling { .. } | Invite::Proceeding => {
                        let m = cx.arm(Timer::M, me, cx.timings.t1x64);
                        *state = Invite::Accepted { m };
                        stay(pass)
                    }
                    // RFC 6026 §7.2: every 2xx (a retransmission or another fork's) goes up;
                    // a proxy forwards each, a UA ACKs each.
                    Invite::Accepted { .. } => stay(pass),
                    // Not in either figure. Treated as stray so the TU applies its stray 2xx
                    // policy (a proxy forwards it statelessly) rather than losing a session.
                    Invite::Completed { .. } => stay(ClientMatch::NoMatch),
                },
                Class::Failure => match state {
                    Invite::Calling { .. } | Invite::Proceeding => {
                        // Zero on reliable transports, armed anyway so a TU that never calls
                        // `set_ack` cannot leak the transaction.
                        let linger = Timings::linger(self.reliable, cx.timings.d);
                        let d = cx.arm(Timer::D, me, linger.unwrap_or(Duration::ZERO));
                        *state = Invite::Completed { ack: None, d };
                        stay(ClientMatch::Pass {
                            id,
                            needs_ack: true,
                        })
                    }
                    Invite::Completed { ack, .. } => {
                        // RFC 3261 §17.1.1.2: each final retransmission gets the ACK again.
                        if let Some(ack) = ack {
                            cx.transmit(&self.dest, ack.clone());
                        }
                        stay(ClientMatch::Absorbed)
                    }
                    // A non-2xx after a 2xx: the session is up, the TU must not see it.
                    Invite::Accepted { .. } => stay(ClientMatch::Absorbed),
                },
            },
            Machine::NonInvite(state) => match class {
                Class::Provisional => match state {
                    NonInvite::Trying(sending) => {
                        *state = NonInvite::Proceeding(sending.clone());
                        stay(pass)
                    }
                    NonInvite::Proceeding(_) => stay(pass),
                    NonInvite::Completed { .. } => stay(ClientMatch::Absorbed),
                },
                Class::Success | Class::Failure => match state {
                    NonInvite::Trying(_) | NonInvite::Proceeding(_) => {
                        match Timings::linger(self.reliable, cx.timings.t4) {
                            None => (pass, Step::Terminate),
                            Some(after) => {
                                let k = cx.arm(Timer::K, me, after);
                                *state = NonInvite::Completed { k };
                                stay(pass)
                            }
                        }
                    }
                    NonInvite::Completed { .. } => stay(ClientMatch::Absorbed),
                },
            },
        }
    }

    fn on_ack(&mut self, ack: Bytes, cx: &mut Ctx<'_, D>) -> Result<Step, TxError> {
        let current = self.state();
        let Machine::Invite(Invite::Completed {
            ack: slot @ None, ..
        }) = &mut self.machine
        else {
            return Err(TxError::WrongClientState(current));
        };
        // RFC 3261 §17.1.1.3: the ACK goes where the INVITE went.
        cx.transmit(&self.dest, ack.clone());
        if self.reliable {
            // Timer D is zero: no final retransmission can come to be answered.
            return Ok(Step::Terminate);
        }
        *slot = Some(ack);
        Ok(Step::Stay)
    }

    fn on_timer(&mut self, id: ClientTxId, timer: Timer, cx: &mut Ctx<'_, D>) -> Step {
        let me = TxRef::Client(id);
        match (&mut self.machine, timer) {
            (
                Machine::Invite(Invite::Calling {
                    request,
                    a: Some(a),
                    b,
                }),
                Timer::A,
            ) => {
                // B is due too and ends the transaction in this same `handle_timeout`.
                if *b <= cx.now {
                    return Step::Stay;
                }
                cx.transmit(&self.dest, request.clone());
                // RFC 3261 §17.1.1.2: A doubles with no cap; B ends it after six doublings.
                let next = a.interval.saturating_mul(2);
                cx.rearm_retransmit(a, Timer::A, me, next);
                Step::Stay
            }
            (Machine::Invite(Invite::Calling { .. }), Timer::B) => {
                Step::Fail(TxEvent::ClientTimeout(id))
            }
            (Machine::Invite(Invite::Completed { .. }), Timer::D)
            | (Machine::Invite(Invite::Accepted { .. }), Timer::M)
            | (Machine::NonInvite(NonInvite::Completed { .. }), Timer::K) => Step::Terminate,
            (Machine::NonInvite(state), Timer::E) => {
                let proceeding = matches!(state, NonInvite::Proceeding(_));
                let (NonInvite::Trying(sending) | NonInvite::Proceeding(sending)) = state else {
                    return Step::Stay;
                };
                let Some(e) = &mut sending.e else {
                    return Step::Stay;
                };
                // F is due too and ends the transaction in this same `handle_timeout`.
                if sending.f <= cx.now {
                    return Step::Stay;
                }
                cx.transmit(&self.dest, sending.request.clone());
                // RFC 3261 §17.1.2.2: E doubles up to T2 while Trying; once a provisional
                // came, the server is alive and T2 is enough.
                let t2 = cx.timings.t2;
                let next = if proceeding {
                    t2
                } else {
                    e.interval.saturating_mul(2).min(t2)
                };
                cx.rearm_retransmit(e, Timer::E, me, next);
                Step::Stay
            }
            (Machine::NonInvite(NonInvite::Trying(_) | NonInvite::Proceeding(_)), Timer::F) => {
                Step::Fail(TxEvent::ClientTimeout(id))
            }
            // The caller checked `deadline`, so no other pair is armed.
            _ => Step::Stay,
        }
    }
}
