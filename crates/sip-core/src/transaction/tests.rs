//! State-machine tests on fake time: a base `Instant` plus durations, no sleeps.
//!
//! [`Sim`] drives one [`Transactions`]: every input goes through a wrapper that drains the
//! outputs and checks that `poll_timeout` equals the earliest deadline found by scanning every
//! transaction, and [`Sim::run_until`] moves time by jumping from one `poll_timeout` to the
//! next (quinn's `Pair::step`), stamping what each timer produced with its instant in ms.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    ClientMatch, ClientState, ClientTxId, Output, RequestKind, ServerMatch, ServerState,
    ServerTxId, TransactionConfig, Transactions, TxError, TxEvent, TxKey,
};

type Dest = &'static str;

/// An unreliable destination.
const UDP: Dest = "udp:192.0.2.1:5060";
/// A reliable destination: connection 7.
const TCP: Dest = "tcp:192.0.2.1:5060#7";

const INVITE: &str = "INVITE";

/// The one place a real instant is read; every test time is an offset from it.
#[allow(clippy::disallowed_methods)]
fn base_instant() -> Instant {
    Instant::now()
}

fn reliable(dest: Dest) -> bool {
    dest.starts_with("tcp")
}

fn msg(body: &'static str) -> Bytes {
    Bytes::from_static(body.as_bytes())
}

fn key(branch: &'static str, method: &'static str) -> TxKey {
    TxKey::new(
        Bytes::from_static(branch.as_bytes()),
        Bytes::from_static(b"192.0.2.9:5060"),
        Bytes::from_static(method.as_bytes()),
    )
}

fn send(dest: Dest, body: &'static str) -> Output<Dest> {
    Output::Transmit {
        dest,
        bytes: msg(body),
    }
}

fn event(e: TxEvent) -> Output<Dest> {
    Output::Event(e)
}

fn pass(id: ClientTxId) -> ClientMatch {
    ClientMatch::Pass {
        id,
        needs_ack: false,
    }
}

fn pass_ack(id: ClientTxId) -> ClientMatch {
    ClientMatch::Pass {
        id,
        needs_ack: true,
    }
}

type Log = Vec<(u64, Output<Dest>)>;

/// No output at all.
const NOTHING: [Output<Dest>; 0] = [];

/// Every transmit in a timer log: (ms, body).
fn sends(log: &Log) -> Vec<(u64, String)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            Output::Transmit { bytes, .. } => {
                Some((*t, String::from_utf8_lossy(bytes).into_owned()))
            }
            Output::Event(_) => None,
        })
        .collect()
}

/// `body` sent at each of `times` ms.
fn every(times: &[u64], body: &str) -> Vec<(u64, String)> {
    times.iter().map(|t| (*t, body.to_owned())).collect()
}

/// Every event in a timer log: (ms, event).
fn events(log: &Log) -> Vec<(u64, TxEvent)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            Output::Event(e) => Some((*t, *e)),
            Output::Transmit { .. } => None,
        })
        .collect()
}

/// One transaction layer on fake time.
struct Sim {
    tx: Transactions<Dest>,
    base: Instant,
    /// Current time, ms after `base`.
    now: u64,
    pending: Vec<Output<Dest>>,
    /// Check `poll_timeout` against a full scan after every input (O(n) each).
    strict: bool,
}

impl Sim {
    fn new() -> Self {
        Self::with(TransactionConfig::default())
    }

    fn with(config: TransactionConfig) -> Self {
        Self {
            tx: Transactions::new(config),
            base: base_instant(),
            now: 0,
            pending: Vec::new(),
            strict: true,
        }
    }

    fn instant(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn t(&self) -> Instant {
        self.instant(self.now)
    }

    /// Drains the outputs of the last input (the drain invariant) and checks the timer queue.
    fn settle(&mut self) {
        while let Some(o) = self.tx.poll_output() {
            self.pending.push(o);
        }
        if self.strict {
            assert_eq!(
                self.tx.poll_timeout(),
                self.tx.earliest_deadline_by_scan(),
                "poll_timeout is not the earliest deadline"
            );
        }
    }

    /// Outputs of the inputs since the last call.
    fn take(&mut self) -> Vec<Output<Dest>> {
        std::mem::take(&mut self.pending)
    }

    fn try_start(
        &mut self,
        key: &TxKey,
        kind: RequestKind,
        dest: Dest,
        body: &'static str,
    ) -> Result<ClientTxId, TxError> {
        let r = self
            .tx
            .start_client(key.clone(), kind, reliable(dest), dest, msg(body), self.t());
        self.settle();
        r
    }

    fn start(
        &mut self,
        key: &TxKey,
        kind: RequestKind,
        dest: Dest,
        body: &'static str,
    ) -> ClientTxId {
        self.try_start(key, kind, dest, body).unwrap()
    }

    fn response(&mut self, key: &TxKey, status: u16) -> ClientMatch {
        let m = self.tx.handle_response(key, status, self.t());
        self.settle();
        m
    }

    fn ack(&mut self, id: ClientTxId, body: &'static str) -> Result<(), TxError> {
        let r = self.tx.set_ack(id, msg(body), self.t());
        self.settle();
        r
    }

    fn transport_error(&mut self, id: ClientTxId) {
        self.tx.transport_error(id, self.t());
        self.settle();
    }

    fn request(&mut self, key: &TxKey, kind: RequestKind, dest: Dest) -> ServerMatch {
        let m = self
            .tx
            .handle_request(key.clone(), kind, reliable(dest), dest, self.t());
        self.settle();
        m
    }

    fn new_server(&mut self, key: &TxKey, kind: RequestKind, dest: Dest) -> ServerTxId {
        match self.request(key, kind, dest) {
            ServerMatch::New(id) => id,
            other => panic!("expected a new server transaction, got {other:?}"),
        }
    }

    fn respond(&mut self, id: ServerTxId, status: u16, body: &'static str) -> Result<(), TxError> {
        let r = self.tx.send_response(id, status, msg(body), self.t());
        self.settle();
        r
    }

    fn server_transport_error(&mut self, id: ServerTxId) {
        self.tx.server_transport_error(id, self.t());
        self.settle();
    }

    /// Moves time to `until` ms, firing each timer at its own deadline, and returns what the
    /// timers produced, stamped with the ms they fired at.
    fn run_until(&mut self, until: u64) -> Log {
        assert!(
            self.pending.is_empty(),
            "take() the outputs before moving time: {:?}",
            self.pending
        );
        let end = self.instant(until);
        let mut log = Vec::new();
        for _ in 0..10_000_000 {
            let Some(next) = self.tx.poll_timeout() else {
                break;
            };
            if next > end {
                break;
            }
            self.tx.handle_timeout(next);
            self.settle();
            let ms = u64::try_from((next - self.base).as_millis()).unwrap();
            log.extend(self.take().into_iter().map(|o| (ms, o)));
        }
        assert!(
            self.tx.poll_timeout().is_none_or(|t| t > end),
            "timers never settle"
        );
        self.now = self.now.max(until);
        log
    }

    /// Jumps to `ms` and asserts that no timer fired on the way.
    fn quiet_until(&mut self, ms: u64) {
        let log = self.run_until(ms);
        assert!(log.is_empty(), "unexpected timer output: {log:?}");
    }
}

// === INVITE client (RFC 3261 §17.1.1, RFC 6026 §7.2) ===

#[test]
fn invite_client_udp_retransmits_on_timer_a_until_timer_b() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    assert_eq!(s.take(), [send(UDP, "INVITE")]);
    assert_eq!(s.tx.client_state(id), Some(ClientState::Calling));
    assert_eq!(s.tx.poll_timeout(), Some(s.instant(500)));

    let log = s.run_until(100_000);
    assert_eq!(
        sends(&log),
        every(&[500, 1500, 3500, 7500, 15500, 31500], "INVITE")
    );
    assert_eq!(
        events(&log),
        [
            (32000, TxEvent::ClientTimeout(id)),
            (32000, TxEvent::ClientTerminated(id))
        ]
    );
    assert_eq!(s.tx.client_state(id), None);
    assert_eq!(s.tx.alive(), (0, 0));
    assert_eq!(s.tx.poll_timeout(), None);
    assert_eq!(s.response(&k, 200), ClientMatch::NoMatch);
}

#[test]
fn invite_client_reliable_sets_no_timer_a_but_timer_b() {
    let mut s = Sim::new();
    let id = s.start(&key("z9hG4bKa", INVITE), RequestKind::Invite, TCP, "INVITE");
    assert_eq!(s.take(), [send(TCP, "INVITE")]);
    assert_eq!(s.tx.poll_timeout(), Some(s.instant(32000)));
    let log = s.run_until(100_000);
    assert!(sends(&log).is_empty());
    assert_eq!(
        events(&log),
        [
            (32000, TxEvent::ClientTimeout(id)),
            (32000, TxEvent::ClientTerminated(id))
        ]
    );
}

#[test]
fn invite_client_provisional_stops_timers_and_proceeding_has_none() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    assert_eq!(sends(&s.run_until(600)), every(&[500], "INVITE"));

    assert_eq!(s.response(&k, 100), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Proceeding));
    assert_eq!(s.tx.poll_timeout(), None, "timer C lives in the TU");
    s.quiet_until(200_000);
    assert_eq!(s.response(&k, 180), pass(id));
    assert_eq!(s.response(&k, 183), pass(id));
    assert_eq!(s.take(), NOTHING);
    assert_eq!(s.tx.client_state(id), Some(ClientState::Proceeding));
}

#[test]
fn invite_client_2xx_in_calling_enters_accepted_and_passes_every_2xx() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    s.quiet_until(100);

    assert_eq!(s.response(&k, 200), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Accepted));
    // RFC 6026: a retransmitted or forked 2xx is passed again, never ACKed here.
    assert_eq!(s.response(&k, 200), pass(id));
    assert_eq!(s.response(&k, 202), pass(id));
    assert_eq!(s.response(&k, 180), ClientMatch::Absorbed);
    assert_eq!(s.response(&k, 486), ClientMatch::Absorbed);
    assert_eq!(s.take(), NOTHING, "no ACK, no INVITE retransmission");
    assert_eq!(
        s.ack(id, "ACK"),
        Err(TxError::WrongClientState(ClientState::Accepted))
    );

    // Timer M = 64*T1 from the first 2xx; timers A and B are gone.
    let log = s.run_until(100_000);
    assert_eq!(log, [(32100, event(TxEvent::ClientTerminated(id)))]);
    assert_eq!(s.response(&k, 200), ClientMatch::NoMatch);
}

#[test]
fn invite_client_2xx_in_proceeding_enters_accepted() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, TCP, "INVITE");
    s.take();
    assert_eq!(s.response(&k, 180), pass(id));
    s.quiet_until(60_000);
    assert_eq!(s.response(&k, 200), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Accepted));
    assert_eq!(s.tx.poll_timeout(), Some(s.instant(92_000)));
    let log = s.run_until(100_000);
    assert_eq!(events(&log), [(92_000, TxEvent::ClientTerminated(id))]);
}

#[test]
fn invite_client_non_2xx_udp_acks_and_reacks_until_timer_d() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    s.run_until(200);
    assert_eq!(s.response(&k, 180), pass(id));
    s.quiet_until(1000);

    assert_eq!(s.response(&k, 486), pass_ack(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Completed));
    assert_eq!(s.take(), NOTHING);
    assert_eq!(s.ack(id, "ACK"), Ok(()));
    assert_eq!(
        s.take(),
        [send(UDP, "ACK")],
        "the ACK goes where the INVITE went"
    );
    assert_eq!(
        s.ack(id, "ACK"),
        Err(TxError::WrongClientState(ClientState::Completed))
    );

    s.quiet_until(2000);
    assert_eq!(s.response(&k, 486), ClientMatch::Absorbed);
    assert_eq!(s.take(), [send(UDP, "ACK")]);
    assert_eq!(s.response(&k, 180), ClientMatch::Absorbed);
    assert_eq!(
        s.response(&k, 200),
        ClientMatch::NoMatch,
        "stray 2xx is the TU's"
    );
    assert_eq!(s.take(), NOTHING);

    // Timer D: 32 s from the final.
    let log = s.run_until(100_000);
    assert_eq!(log, [(33_000, event(TxEvent::ClientTerminated(id)))]);
    assert_eq!(s.response(&k, 486), ClientMatch::NoMatch);
}

#[test]
fn invite_client_non_2xx_in_calling_stops_timers_a_and_b() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    assert_eq!(sends(&s.run_until(600)), every(&[500], "INVITE"));
    assert_eq!(s.response(&k, 503), pass_ack(id));
    s.ack(id, "ACK").unwrap();
    s.take();
    let log = s.run_until(100_000);
    assert_eq!(log, [(32_600, event(TxEvent::ClientTerminated(id)))]);
}

#[test]
fn invite_client_non_2xx_without_ack_yet_absorbs_silently() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    assert_eq!(s.response(&k, 486), pass_ack(id));
    assert_eq!(s.response(&k, 486), ClientMatch::Absorbed);
    assert_eq!(s.take(), NOTHING);
}

#[test]
fn invite_client_non_2xx_reliable_ends_once_the_ack_is_sent() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, TCP, "INVITE");
    s.take();
    s.quiet_until(5000);
    assert_eq!(s.response(&k, 404), pass_ack(id));
    // Timer D is zero: due now, waiting only for the TU's ACK.
    assert_eq!(s.tx.poll_timeout(), Some(s.t()));
    assert_eq!(s.ack(id, "ACK"), Ok(()));
    assert_eq!(
        s.take(),
        [send(TCP, "ACK"), event(TxEvent::ClientTerminated(id))]
    );
    assert_eq!(s.tx.alive(), (0, 0));
    assert_eq!(s.tx.poll_timeout(), None);
}

#[test]
fn invite_client_non_2xx_reliable_without_ack_ends_at_next_timeout() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, TCP, "INVITE");
    s.take();
    assert_eq!(s.response(&k, 404), pass_ack(id));
    let log = s.run_until(0);
    assert_eq!(log, [(0, event(TxEvent::ClientTerminated(id)))]);
    assert_eq!(s.ack(id, "ACK"), Err(TxError::UnknownTransaction));
}

#[test]
fn set_ack_outside_completed_invite_is_misuse() {
    let mut s = Sim::new();
    let inv = s.start(&key("z9hG4bKa", INVITE), RequestKind::Invite, UDP, "INVITE");
    assert_eq!(
        s.ack(inv, "ACK"),
        Err(TxError::WrongClientState(ClientState::Calling))
    );
    let k = key("z9hG4bKb", "OPTIONS");
    let opt = s.start(&k, RequestKind::Other, UDP, "OPTIONS");
    assert_eq!(s.response(&k, 404), pass(opt), "no ACK for non-INVITE");
    assert_eq!(
        s.ack(opt, "ACK"),
        Err(TxError::WrongClientState(ClientState::Completed))
    );
    s.take();
}

// === non-INVITE client (RFC 3261 §17.1.2) ===

#[test]
fn non_invite_client_udp_timer_e_doubles_to_t2_until_timer_f() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "OPTIONS");
    let id = s.start(&k, RequestKind::Other, UDP, "OPTIONS");
    assert_eq!(s.take(), [send(UDP, "OPTIONS")]);
    assert_eq!(s.tx.client_state(id), Some(ClientState::Trying));
    let log = s.run_until(100_000);
    assert_eq!(
        sends(&log),
        every(
            &[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
            "OPTIONS"
        )
    );
    assert_eq!(
        events(&log),
        [
            (32000, TxEvent::ClientTimeout(id)),
            (32000, TxEvent::ClientTerminated(id))
        ]
    );
}

#[test]
fn non_invite_client_timer_e_in_proceeding_fires_every_t2() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "REGISTER");
    let id = s.start(&k, RequestKind::Other, UDP, "REGISTER");
    s.take();
    assert_eq!(sends(&s.run_until(600)), every(&[500], "REGISTER"));
    assert_eq!(s.response(&k, 100), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Proceeding));
    assert_eq!(s.response(&k, 100), pass(id));
    // E keeps its deadline (1.5 s) and from then on is reset to T2.
    let log = s.run_until(100_000);
    assert_eq!(
        sends(&log),
        every(
            &[1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500],
            "REGISTER"
        )
    );
    assert_eq!(
        events(&log),
        [
            (32000, TxEvent::ClientTimeout(id)),
            (32000, TxEvent::ClientTerminated(id))
        ]
    );
}

#[test]
fn non_invite_client_final_enters_completed_until_timer_k() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "BYE");
    let id = s.start(&k, RequestKind::Other, UDP, "BYE");
    s.take();
    assert_eq!(sends(&s.run_until(700)), every(&[500], "BYE"));
    assert_eq!(s.response(&k, 200), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Completed));
    assert_eq!(s.response(&k, 200), ClientMatch::Absorbed);
    assert_eq!(s.response(&k, 100), ClientMatch::Absorbed);
    assert_eq!(s.response(&k, 500), ClientMatch::Absorbed);
    assert_eq!(s.take(), NOTHING);
    // Timer K = T4; E and F are gone.
    let log = s.run_until(100_000);
    assert_eq!(log, [(5700, event(TxEvent::ClientTerminated(id)))]);
    assert_eq!(s.response(&k, 200), ClientMatch::NoMatch);
}

#[test]
fn non_invite_client_final_from_proceeding() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "MESSAGE");
    let id = s.start(&k, RequestKind::Other, UDP, "MESSAGE");
    s.take();
    assert_eq!(s.response(&k, 100), pass(id));
    assert_eq!(s.response(&k, 403), pass(id));
    assert_eq!(s.tx.client_state(id), Some(ClientState::Completed));
}

#[test]
fn non_invite_client_reliable_no_retransmissions_and_timer_k_zero() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "OPTIONS");
    let id = s.start(&k, RequestKind::Other, TCP, "OPTIONS");
    s.take();
    s.quiet_until(31_000);
    assert_eq!(s.response(&k, 200), pass(id));
    assert_eq!(s.take(), [event(TxEvent::ClientTerminated(id))]);
    assert_eq!(s.tx.alive(), (0, 0));

    let k2 = key("z9hG4bKb", "OPTIONS");
    let id2 = s.start(&k2, RequestKind::Other, TCP, "OPTIONS");
    s.take();
    let log = s.run_until(100_000);
    assert!(sends(&log).is_empty());
    assert_eq!(
        events(&log),
        [
            (63_000, TxEvent::ClientTimeout(id2)),
            (63_000, TxEvent::ClientTerminated(id2))
        ]
    );
}

// === client API ===

#[test]
fn start_client_rejects_ack_and_duplicate_keys_and_never_reuses_ids() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    assert_eq!(
        s.try_start(&key("z9hG4bKa", "ACK"), RequestKind::Ack, UDP, "ACK"),
        Err(TxError::AckTransaction)
    );
    let first = s.start(&k, RequestKind::Invite, TCP, "INVITE");
    s.take();
    assert_eq!(
        s.try_start(&k, RequestKind::Invite, TCP, "INVITE"),
        Err(TxError::DuplicateKey)
    );
    assert_eq!(s.take(), NOTHING, "nothing sent on error");
    assert_eq!(s.tx.alive(), (1, 0));
    assert_eq!(s.tx.find_client(&k), Some(first));

    s.transport_error(first);
    s.take();
    let second = s.start(&k, RequestKind::Invite, TCP, "INVITE");
    assert_ne!(first, second);
    assert_eq!(s.tx.find_client(&k), Some(second));
}

#[test]
fn transport_error_terminates_a_client_in_any_state() {
    let mut s = Sim::new();
    let calling = key("z9hG4bKa", INVITE);
    let proceeding = key("z9hG4bKb", INVITE);
    let completed = key("z9hG4bKc", INVITE);
    let accepted = key("z9hG4bKd", INVITE);
    let trying = key("z9hG4bKe", "OPTIONS");
    let mut ids = Vec::new();
    for k in [&calling, &proceeding, &completed, &accepted] {
        ids.push(s.start(k, RequestKind::Invite, UDP, "INVITE"));
    }
    ids.push(s.start(&trying, RequestKind::Other, UDP, "OPTIONS"));
    s.response(&proceeding, 180);
    s.response(&completed, 486);
    s.response(&accepted, 200);
    s.take();
    for id in ids {
        s.transport_error(id);
        assert_eq!(
            s.take(),
            [
                event(TxEvent::ClientTransportError(id)),
                event(TxEvent::ClientTerminated(id))
            ]
        );
        assert_eq!(s.tx.client_state(id), None);
        s.transport_error(id);
        assert_eq!(s.take(), NOTHING, "an unknown id is ignored");
    }
    assert_eq!(s.tx.alive(), (0, 0));
    assert_eq!(s.tx.poll_timeout(), None);
    assert_eq!(s.response(&calling, 200), ClientMatch::NoMatch);
    s.quiet_until(100_000);
}

#[test]
fn responses_with_impossible_status_or_unknown_key_do_not_match() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    for status in [0, 99, 700, 999, u16::MAX] {
        assert_eq!(s.response(&k, status), ClientMatch::NoMatch);
    }
    assert_eq!(
        s.response(&key("z9hG4bKa", "CANCEL"), 200),
        ClientMatch::NoMatch
    );
    assert_eq!(
        s.response(&key("z9hG4bKz", INVITE), 200),
        ClientMatch::NoMatch
    );
    assert_eq!(s.tx.client_state(id), Some(ClientState::Calling));
}

// === INVITE server (RFC 3261 §17.2.1, RFC 6026 §7.1) ===

#[test]
fn invite_server_proceeding_resends_the_last_provisional() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, UDP);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Proceeding));
    assert_eq!(s.tx.find_server(&k), Some(id));
    assert_eq!(s.tx.poll_timeout(), None);

    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), NOTHING, "no provisional sent yet");
    s.respond(id, 100, "100").unwrap();
    assert_eq!(s.take(), [send(UDP, "100")]);
    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "100")]);
    s.respond(id, 180, "180").unwrap();
    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "180"), send(UDP, "180")]);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Proceeding));
    s.quiet_until(1_000_000);
    assert_eq!(s.tx.alive(), (0, 1), "Proceeding waits for the TU");
}

#[test]
fn invite_server_non_2xx_udp_retransmits_on_timer_g_until_timer_h() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, UDP);
    s.respond(id, 486, "486").unwrap();
    assert_eq!(s.take(), [send(UDP, "486")]);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Completed));
    let log = s.run_until(100_000);
    assert_eq!(
        sends(&log),
        every(
            &[500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
            "486"
        )
    );
    assert_eq!(
        events(&log),
        [
            (32000, TxEvent::ServerTimeout(id)),
            (32000, TxEvent::ServerTerminated(id))
        ]
    );
    assert_eq!(s.tx.alive(), (0, 0));
}

#[test]
fn invite_server_ack_confirms_then_timer_i_ends_it() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, UDP);
    s.respond(id, 486, "486").unwrap();
    s.take();
    assert_eq!(sends(&s.run_until(1000)), every(&[500], "486"));

    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "486")], "Completed resends the final");
    s.quiet_until(1200);
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::AckAbsorbed
    );
    assert_eq!(s.tx.server_state(id), Some(ServerState::Confirmed));
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::AckAbsorbed
    );
    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), NOTHING, "Confirmed absorbs silently");

    // Timer I = T4; G and H are gone.
    let log = s.run_until(100_000);
    assert_eq!(log, [(6200, event(TxEvent::ServerTerminated(id)))]);
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::PassToTu(None)
    );
}

#[test]
fn invite_server_reliable_no_timer_g_and_timer_i_zero() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, TCP);
    s.respond(id, 603, "603").unwrap();
    assert_eq!(s.take(), [send(TCP, "603")]);
    s.quiet_until(20_000);
    assert_eq!(
        s.request(&k, RequestKind::Ack, TCP),
        ServerMatch::AckAbsorbed
    );
    assert_eq!(s.take(), [event(TxEvent::ServerTerminated(id))]);

    // Without the ACK, timer H still runs on a reliable transport.
    let k2 = key("z9hG4bKb", INVITE);
    let id2 = s.new_server(&k2, RequestKind::Invite, TCP);
    s.respond(id2, 603, "603").unwrap();
    s.take();
    let log = s.run_until(100_000);
    assert!(sends(&log).is_empty());
    assert_eq!(
        events(&log),
        [
            (52_000, TxEvent::ServerTimeout(id2)),
            (52_000, TxEvent::ServerTerminated(id2))
        ]
    );
}

#[test]
fn invite_server_2xx_enters_accepted_per_rfc_6026() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, UDP);
    s.respond(id, 180, "180").unwrap();
    s.respond(id, 200, "200").unwrap();
    assert_eq!(s.take(), [send(UDP, "180"), send(UDP, "200")]);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Accepted));

    // Retransmitted INVITEs are absorbed, not new transactions, and not answered here.
    assert_eq!(
        s.request(&k, RequestKind::Invite, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), NOTHING);
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::PassToTu(Some(id))
    );
    // The TU's own 2xx retransmissions (or other forks' 2xx) pass through.
    s.respond(id, 200, "200").unwrap();
    assert_eq!(s.take(), [send(UDP, "200")]);
    assert_eq!(
        s.respond(id, 180, "180"),
        Err(TxError::WrongServerState(ServerState::Accepted))
    );
    assert_eq!(
        s.respond(id, 486, "486"),
        Err(TxError::WrongServerState(ServerState::Accepted))
    );
    assert_eq!(s.take(), NOTHING);

    // Timer L = 64*T1; no timer G ever ran.
    let log = s.run_until(100_000);
    assert_eq!(log, [(32_000, event(TxEvent::ServerTerminated(id)))]);
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::PassToTu(None)
    );
    match s.request(&k, RequestKind::Invite, UDP) {
        ServerMatch::New(again) => assert_ne!(again, id, "ids are never reused"),
        other => panic!("expected New, got {other:?}"),
    }
}

#[test]
fn invite_server_ack_before_any_final_is_dropped() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.new_server(&k, RequestKind::Invite, UDP);
    s.respond(id, 100, "100").unwrap();
    s.take();
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::AckAbsorbed
    );
    assert_eq!(s.take(), NOTHING);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Proceeding));
}

#[test]
fn send_response_misuse_is_an_error_and_sends_nothing() {
    let mut s = Sim::new();
    let inv = s.new_server(&key("z9hG4bKa", INVITE), RequestKind::Invite, UDP);
    assert_eq!(s.respond(inv, 99, "x"), Err(TxError::InvalidStatus(99)));
    assert_eq!(s.respond(inv, 700, "x"), Err(TxError::InvalidStatus(700)));
    s.respond(inv, 486, "486").unwrap();
    s.take();
    for status in [100, 180, 200, 486] {
        assert_eq!(
            s.respond(inv, status, "x"),
            Err(TxError::WrongServerState(ServerState::Completed))
        );
    }
    s.request(&key("z9hG4bKa", INVITE), RequestKind::Ack, UDP);
    s.take();
    assert_eq!(
        s.respond(inv, 486, "x"),
        Err(TxError::WrongServerState(ServerState::Confirmed))
    );

    let opt = s.new_server(&key("z9hG4bKb", "OPTIONS"), RequestKind::Other, UDP);
    s.respond(opt, 200, "200").unwrap();
    s.take();
    assert_eq!(
        s.respond(opt, 200, "x"),
        Err(TxError::WrongServerState(ServerState::Completed))
    );
    assert_eq!(s.take(), NOTHING);

    let gone = s.new_server(&key("z9hG4bKc", "OPTIONS"), RequestKind::Other, TCP);
    s.respond(gone, 200, "200").unwrap();
    s.take();
    assert_eq!(s.respond(gone, 200, "x"), Err(TxError::UnknownTransaction));
    assert_eq!(s.take(), NOTHING);
}

#[test]
fn server_transport_error_terminates_except_in_accepted() {
    let mut s = Sim::new();
    let a = s.new_server(&key("z9hG4bKa", INVITE), RequestKind::Invite, UDP);
    let b = s.new_server(&key("z9hG4bKb", INVITE), RequestKind::Invite, UDP);
    let c = s.new_server(&key("z9hG4bKc", INVITE), RequestKind::Invite, UDP);
    let d = s.new_server(&key("z9hG4bKd", "OPTIONS"), RequestKind::Other, UDP);
    s.respond(b, 500, "500").unwrap();
    s.respond(c, 200, "200").unwrap();
    s.take();
    for id in [a, b, d] {
        s.server_transport_error(id);
        assert_eq!(
            s.take(),
            [
                event(TxEvent::ServerTransportError(id)),
                event(TxEvent::ServerTerminated(id))
            ]
        );
    }
    // RFC 6026: Accepted informs the TU and stays until timer L.
    s.server_transport_error(c);
    assert_eq!(s.take(), [event(TxEvent::ServerTransportError(c))]);
    assert_eq!(s.tx.server_state(c), Some(ServerState::Accepted));
    s.server_transport_error(a);
    assert_eq!(s.take(), NOTHING, "an unknown id is ignored");
    assert_eq!(s.tx.alive(), (0, 1));
}

#[test]
fn ack_matching_no_invite_transaction_goes_to_the_tu() {
    let mut s = Sim::new();
    assert_eq!(
        s.request(&key("z9hG4bKnew", INVITE), RequestKind::Ack, UDP),
        ServerMatch::PassToTu(None)
    );
    assert_eq!(s.tx.alive(), (0, 0), "an ACK never creates a transaction");

    // A caller that keys an ACK with its own CSeq method never reaches a non-INVITE one.
    let k = key("z9hG4bKb", "OPTIONS");
    let opt = s.new_server(&k, RequestKind::Other, UDP);
    assert_eq!(
        s.request(&k, RequestKind::Ack, UDP),
        ServerMatch::PassToTu(None)
    );
    assert_eq!(s.tx.server_state(opt), Some(ServerState::Trying));
    assert_eq!(s.take(), NOTHING);
}

// === non-INVITE server (RFC 3261 §17.2.2) ===

#[test]
fn non_invite_server_walks_trying_proceeding_completed_until_timer_j() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "REGISTER");
    let id = s.new_server(&k, RequestKind::Other, UDP);
    assert_eq!(s.tx.server_state(id), Some(ServerState::Trying));
    assert_eq!(
        s.request(&k, RequestKind::Other, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), NOTHING, "Trying absorbs silently");

    s.respond(id, 100, "100").unwrap();
    assert_eq!(s.tx.server_state(id), Some(ServerState::Proceeding));
    assert_eq!(
        s.request(&k, RequestKind::Other, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "100"), send(UDP, "100")]);

    s.quiet_until(1000);
    s.respond(id, 200, "200").unwrap();
    assert_eq!(s.tx.server_state(id), Some(ServerState::Completed));
    assert_eq!(
        s.request(&k, RequestKind::Other, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "200"), send(UDP, "200")]);

    // Timer J = 64*T1; nothing is retransmitted on its own.
    let log = s.run_until(100_000);
    assert_eq!(log, [(33_000, event(TxEvent::ServerTerminated(id)))]);
    assert!(matches!(
        s.request(&k, RequestKind::Other, UDP),
        ServerMatch::New(_)
    ));
}

#[test]
fn non_invite_server_final_straight_from_trying() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "SUBSCRIBE");
    let id = s.new_server(&k, RequestKind::Other, UDP);
    s.respond(id, 489, "489").unwrap();
    assert_eq!(s.tx.server_state(id), Some(ServerState::Completed));
    assert_eq!(
        s.request(&k, RequestKind::Other, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(s.take(), [send(UDP, "489"), send(UDP, "489")]);
}

#[test]
fn non_invite_server_reliable_final_ends_at_once() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", "OPTIONS");
    let id = s.new_server(&k, RequestKind::Other, TCP);
    s.respond(id, 180, "180").unwrap();
    s.respond(id, 200, "200").unwrap();
    assert_eq!(
        s.take(),
        [
            send(TCP, "180"),
            send(TCP, "200"),
            event(TxEvent::ServerTerminated(id))
        ]
    );
    assert_eq!(s.tx.alive(), (0, 0));
    assert_eq!(s.tx.poll_timeout(), None);
}

// === CANCEL (RFC 3261 §9) ===

#[test]
fn cancel_is_its_own_server_transaction_and_finds_its_invite() {
    let mut s = Sim::new();
    let inv_key = key("z9hG4bKa", INVITE);
    let cancel_key = key("z9hG4bKa", "CANCEL");
    let inv = s.new_server(&inv_key, RequestKind::Invite, UDP);
    s.respond(inv, 180, "180").unwrap();
    let cancel = s.new_server(&cancel_key, RequestKind::Cancel, UDP);
    assert_ne!(cancel, inv);
    assert_eq!(s.tx.find_server(&cancel_key), Some(cancel));
    assert_eq!(
        s.tx.find_server(&cancel_key.with_method(Bytes::from_static(b"INVITE"))),
        Some(inv)
    );

    s.respond(cancel, 200, "200-cancel").unwrap();
    s.respond(inv, 487, "487").unwrap();
    assert_eq!(
        s.request(&cancel_key, RequestKind::Cancel, UDP),
        ServerMatch::Retransmission
    );
    assert_eq!(
        s.take(),
        [
            send(UDP, "180"),
            send(UDP, "200-cancel"),
            send(UDP, "487"),
            send(UDP, "200-cancel")
        ]
    );
    assert_eq!(
        s.request(&inv_key, RequestKind::Ack, UDP),
        ServerMatch::AckAbsorbed
    );
    assert_eq!(s.tx.server_state(inv), Some(ServerState::Confirmed));
    assert_eq!(s.tx.server_state(cancel), Some(ServerState::Completed));
    assert_eq!(s.tx.find_server(&key("z9hG4bKz", INVITE)), None);
}

#[test]
fn cancel_is_its_own_client_transaction() {
    let mut s = Sim::new();
    let inv_key = key("z9hG4bKa", INVITE);
    let cancel_key = key("z9hG4bKa", "CANCEL");
    let inv = s.start(&inv_key, RequestKind::Invite, UDP, "INVITE");
    assert_eq!(s.response(&inv_key, 180), pass(inv));
    let cancel = s.start(&cancel_key, RequestKind::Cancel, UDP, "CANCEL");
    assert_ne!(cancel, inv);
    assert_eq!(s.take(), [send(UDP, "INVITE"), send(UDP, "CANCEL")]);
    assert_eq!(s.tx.client_state(cancel), Some(ClientState::Trying));

    // CANCEL is retransmitted by timer E like any non-INVITE request.
    assert_eq!(sends(&s.run_until(600)), every(&[500], "CANCEL"));
    assert_eq!(s.response(&cancel_key, 200), pass(cancel));
    assert_eq!(s.response(&inv_key, 487), pass_ack(inv));
    s.ack(inv, "ACK").unwrap();
    assert_eq!(s.take(), [send(UDP, "ACK")]);
    let log = s.run_until(100_000);
    assert_eq!(
        events(&log),
        [
            (5600, TxEvent::ClientTerminated(cancel)),
            (32_600, TxEvent::ClientTerminated(inv))
        ]
    );
    assert!(sends(&log).is_empty());
}

// === timers and scale ===

#[test]
fn late_handle_timeout_fires_once_and_lets_lifetime_win() {
    let mut s = Sim::new();
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    s.take();
    // A was due at 0.5 and 1.5 s: one retransmission, re-armed from now with the next
    // interval, not a burst.
    s.tx.handle_timeout(s.instant(2000));
    s.settle();
    assert_eq!(s.take(), [send(UDP, "INVITE")]);
    assert_eq!(s.tx.poll_timeout(), Some(s.instant(3000)));
    // A and B both overdue: B ends it without one last retransmission.
    s.tx.handle_timeout(s.instant(40_000));
    s.settle();
    assert_eq!(
        s.take(),
        [
            event(TxEvent::ClientTimeout(id)),
            event(TxEvent::ClientTerminated(id))
        ]
    );
}

#[test]
fn config_defaults_and_clamping() {
    assert_eq!(
        TransactionConfig::default(),
        TransactionConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    );
    let zero = TransactionConfig {
        t1: Duration::ZERO,
        t2: Duration::ZERO,
        t4: Duration::ZERO,
    };
    let mut s = Sim::with(zero);
    assert_eq!(
        s.tx.config(),
        TransactionConfig {
            t1: Duration::from_millis(1),
            t2: Duration::from_millis(1),
            t4: Duration::ZERO,
        }
    );
    // A zero T1 would spin; clamped to 1 ms the INVITE still runs A then B at 64 ms.
    let inv = s.start(&key("z9hG4bKa", INVITE), RequestKind::Invite, UDP, "INVITE");
    s.take();
    let log = s.run_until(1000);
    assert_eq!(sends(&log), every(&[1, 3, 7, 15, 31, 63], "INVITE"));
    assert_eq!(events(&log)[0], (64, TxEvent::ClientTimeout(inv)));
    // A zero T4 makes timer K zero even on UDP.
    let k = key("z9hG4bKb", "OPTIONS");
    let opt = s.start(&k, RequestKind::Other, UDP, "OPTIONS");
    assert_eq!(s.response(&k, 200), pass(opt));
    assert_eq!(
        s.take(),
        [send(UDP, "OPTIONS"), event(TxEvent::ClientTerminated(opt))]
    );

    let huge = TransactionConfig {
        t1: Duration::MAX,
        t2: Duration::MAX,
        t4: Duration::MAX,
    };
    let hour = Duration::from_secs(3600);
    let config = Transactions::<Dest>::new(huge).config();
    assert_eq!((config.t1, config.t2, config.t4), (hour, hour, hour));
}

#[test]
fn timer_d_is_at_least_32_s_and_follows_a_larger_t1() {
    let mut s = Sim::with(TransactionConfig {
        t1: Duration::from_secs(1),
        ..TransactionConfig::default()
    });
    let k = key("z9hG4bKa", INVITE);
    let id = s.start(&k, RequestKind::Invite, UDP, "INVITE");
    assert_eq!(s.response(&k, 486), pass_ack(id));
    s.take();
    let log = s.run_until(1_000_000);
    assert_eq!(log, [(64_000, event(TxEvent::ClientTerminated(id)))]);
}

#[test]
fn ten_thousand_transactions_all_end_and_free_every_timer() {
    const N: u64 = 10_000;
    let mut s = Sim::new();
    // A full scan per input would make this quadratic; checked at the end instead.
    s.strict = false;
    let branches: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("z9hG4bK{i}"))).collect();
    let sent_by = Bytes::from_static(b"192.0.2.9:5060");
    let mk = |i: usize, method: &'static str| {
        TxKey::new(
            branches[i].clone(),
            sent_by.clone(),
            Bytes::from_static(method.as_bytes()),
        )
    };
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for i in 0..N as usize {
        // Start times spread over 10 s so deadlines interleave.
        s.run_until(i as u64);
        s.take();
        let dest = if i % 2 == 0 { UDP } else { TCP };
        let invite = i % 3 != 0;
        let (method, kind) = if invite {
            (INVITE, RequestKind::Invite)
        } else {
            ("OPTIONS", RequestKind::Other)
        };
        let k = mk(i, method);
        let c = s.start(&k, kind, dest, "REQ");
        clients.push(c);
        // Client outcomes: timeout, provisional then failure, success, transport error.
        match i % 4 {
            0 => {}
            1 => {
                s.response(&k, 180);
                if s.response(&k, 486) == pass_ack(c) {
                    s.ack(c, "ACK").unwrap();
                }
            }
            2 => {
                s.response(&k, 200);
            }
            _ => s.transport_error(c),
        }
        // Server outcomes: failure with no ACK (H), failure + ACK (I), success (L/J).
        // Client and server keys live in separate indexes: the same key is fine.
        let sk = k.clone();
        let id = s.new_server(&sk, kind, dest);
        servers.push(id);
        match i % 3 {
            0 => s.respond(id, 404, "404").unwrap(),
            1 => {
                s.respond(id, 486, "486").unwrap();
                s.request(&sk, RequestKind::Ack, dest);
            }
            _ => s.respond(id, 200, "200").unwrap(),
        }
        s.take();
    }
    assert_eq!(
        s.tx.poll_timeout(),
        s.tx.earliest_deadline_by_scan(),
        "poll_timeout is not the earliest deadline"
    );
    let alive = s.tx.alive();
    assert!(alive.0 > 0 && alive.1 > 0);

    let log = s.run_until(1_000_000);
    assert_eq!(s.tx.alive(), (0, 0));
    assert_eq!(s.tx.poll_timeout(), None);
    assert_eq!(s.tx.timers.len(), 0, "stale timer entries were all dropped");

    // Every transaction that was still alive ended exactly once.
    let ended_clients: HashSet<ClientTxId> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            TxEvent::ClientTerminated(id) => Some(id),
            _ => None,
        })
        .collect();
    let ended_servers: HashSet<ServerTxId> = events(&log)
        .into_iter()
        .filter_map(|(_, e)| match e {
            TxEvent::ServerTerminated(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!((ended_clients.len(), ended_servers.len()), alive);
    assert!(ended_servers.iter().all(|id| servers.contains(id)));
    assert!(ended_clients.iter().all(|id| clients.contains(id)));
}

/// A small deterministic generator: no RNG crate, same sequence every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn poll_timeout_is_always_the_earliest_deadline() {
    // `Sim` checks poll_timeout against a full scan after every input; this drives a few
    // thousand mixed inputs through every state so the check meets every transition.
    let mut s = Sim::new();
    let mut rng = Lcg(7);
    let branches: Vec<Bytes> = (0..400)
        .map(|i| Bytes::from(format!("z9hG4bK{i}")))
        .collect();
    let sent_by = Bytes::from_static(b"192.0.2.9:5060");
    let mut client_keys: Vec<(TxKey, ClientTxId)> = Vec::new();
    let mut server_keys: Vec<(TxKey, ServerTxId)> = Vec::new();
    let statuses = [100, 180, 200, 202, 302, 404, 486, 503, 603];
    let mut seen_clients = HashSet::new();
    let mut seen_servers = HashSet::new();
    for step in 0..6000 {
        let dest = if rng.below(3) == 0 { TCP } else { UDP };
        let branch = branches[rng.below(400) as usize].clone();
        let (method, kind) = match rng.below(3) {
            0 => (INVITE, RequestKind::Invite),
            1 => ("CANCEL", RequestKind::Cancel),
            _ => ("BYE", RequestKind::Other),
        };
        let k = TxKey::new(
            branch,
            sent_by.clone(),
            Bytes::from_static(method.as_bytes()),
        );
        match rng.below(9) {
            0 => {
                if let Ok(id) = s.try_start(&k, kind, dest, "REQ") {
                    client_keys.push((k, id));
                }
            }
            1 => {
                if let ServerMatch::New(id) = s.request(&k, kind, dest) {
                    server_keys.push((k, id));
                }
            }
            2 | 3 if !client_keys.is_empty() => {
                let (k, id) = client_keys[rng.below(client_keys.len() as u64) as usize].clone();
                let status = statuses[rng.below(statuses.len() as u64) as usize];
                if let ClientMatch::Pass {
                    needs_ack: true, ..
                } = s.response(&k, status)
                {
                    if rng.below(4) != 0 {
                        s.ack(id, "ACK").unwrap();
                    }
                }
            }
            4 | 5 if !server_keys.is_empty() => {
                let (k, id) = server_keys[rng.below(server_keys.len() as u64) as usize].clone();
                let status = statuses[rng.below(statuses.len() as u64) as usize];
                let _ = s.respond(id, status, "RSP");
                if rng.below(2) == 0 {
                    let ack_key = k.with_method(Bytes::from_static(b"INVITE"));
                    s.request(&ack_key, RequestKind::Ack, dest);
                }
            }
            6 if !client_keys.is_empty() && rng.below(4) == 0 => {
                let id = client_keys[rng.below(client_keys.len() as u64) as usize].1;
                s.transport_error(id);
            }
            _ => {
                let until = s.now + rng.below(3000);
                s.run_until(until);
            }
        }
        s.take();
        if step % 50 == 0 {
            seen_clients.extend(s.tx.clients.keys().filter_map(|id| s.tx.client_state(*id)));
            seen_servers.extend(s.tx.servers.keys().filter_map(|id| s.tx.server_state(*id)));
        }
        if step % 1000 == 999 {
            client_keys.retain(|(_, id)| s.tx.client_state(*id).is_some());
            server_keys.retain(|(_, id)| s.tx.server_state(*id).is_some());
        }
    }
    assert_eq!(
        seen_clients.len(),
        5,
        "client states visited: {seen_clients:?}"
    );
    assert_eq!(
        seen_servers.len(),
        5,
        "server states visited: {seen_servers:?}"
    );
    // Drain: everything with a timer ends; what is left waits for a TU answer.
    s.run_until(s.now + 1_000_000);
    assert_eq!(s.tx.poll_timeout(), None);
    let servers: Vec<ServerTxId> = s.tx.servers.keys().copied().collect();
    for id in servers {
        let state = s.tx.server_state(id);
        assert!(
            matches!(state, Some(ServerState::Trying | ServerState::Proceeding)),
            "{state:?} should have ended"
        );
    }
    let clients: Vec<ClientTxId> = s.tx.clients.keys().copied().collect();
    for id in clients {
        assert_eq!(s.tx.client_state(id), Some(ClientState::Proceeding));
    }
}

#[test]
fn stale_timer_entries_are_compacted_behind_a_live_top() {
    let mut s = Sim::new();
    // One live timer at the top keeps stale entries from surfacing on their own.
    s.start(
        &key("z9hG4bKlive", "OPTIONS"),
        RequestKind::Other,
        UDP,
        "OPTIONS",
    );
    let branches: Vec<Bytes> = (0..5000)
        .map(|i| Bytes::from(format!("z9hG4bK{i}")))
        .collect();
    s.strict = false;
    for branch in branches {
        let k = TxKey::new(
            branch,
            Bytes::from_static(b"h"),
            Bytes::from_static(b"INVITE"),
        );
        let id = s.start(&k, RequestKind::Invite, TCP, "INVITE");
        // Cancels timer B (deadline 32 s, far below the live top at 0.5 s).
        s.transport_error(id);
    }
    s.take();
    assert_eq!(s.tx.alive(), (1, 0));
    assert!(
        s.tx.timers.len() <= 1024 + 2,
        "stale entries kept: {}",
        s.tx.timers.len()
    );
    assert_eq!(s.tx.poll_timeout(), s.tx.earliest_deadline_by_scan());
}

#[test]
fn debug_output_shows_counts_not_message_bytes() {
    let mut s = Sim::new();
    s.start(
        &key("z9hG4bKa", INVITE),
        RequestKind::Invite,
        UDP,
        "SECRET-SDP",
    );
    let shown = format!("{:?}", s.tx);
    assert!(shown.contains("clients: 1"), "{shown}");
    assert!(!shown.contains("SECRET"), "{shown}");
}
