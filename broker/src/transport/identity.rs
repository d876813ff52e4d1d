//! Who may speak for a broker id: the sessions of peer processes, the incarnation the
//! cluster metadata registers for each broker, and the incarnations it replaced (no
//! I/O, no clock: time comes in as arguments).
//!
//! # The rule
//!
//! Every process start draws a random incarnation id and sends it in its handshakes. A
//! broker admits an inbound handshake from broker `b` with incarnation `i` unless:
//!
//! 1. `i` was **replaced**: the metadata log registered `b` as `i` and later as another
//!    incarnation. A replaced incarnation is fenced for good: refused with
//!    [`RefusalCode::StaleIncarnation`], and its open connections are closed at their
//!    next frame. Registration order is the metadata log's, the one order every broker
//!    agrees on; "newer" means "registered later" (Kafka orders them by broker epoch, the
//!    offset of the registration record).
//! 2. `i` is not the registered incarnation and **another incarnation of `b` has a live
//!    session here**: refused with [`RefusalCode::DuplicateBroker`] (Kafka's
//!    DUPLICATE_BROKER_REGISTRATION). A session is live while it has an open inbound
//!    connection that delivered a frame within `session_timeout_ms`; every connection
//!    carries a keepalive frame each `keepalive_interval_ms`, so a live process renews it
//!    even when it has nothing to say. A killed process's connections close at once, so
//!    its restart is admitted at once; a stopped (SIGSTOP) or cut-off one stops renewing
//!    and is replaceable after the timeout.
//!
//! The registered incarnation itself is always admitted (it is the one the cluster
//! agreed on). The controller registers a newcomer only while its session at the
//! controller is live, and registering it replaces (fences) its predecessor on every
//! broker as they apply the record.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::codec::RefusalCode;
use super::BrokerId;

/// Replaced incarnations remembered per broker id. Each restart of a broker adds one, so
/// this bounds memory while covering any zombie of the last 64 restarts.
pub const REPLACED_PER_BROKER_MAX: usize = 64;

/// One incarnation's inbound connections to this broker.
#[derive(Debug, Clone, Copy)]
struct Session {
    open_connections: usize,
    last_heard: Instant,
}

/// Sessions, registrations and replaced incarnations (see the module docs).
#[derive(Debug)]
pub(crate) struct Identities {
    session_timeout: Duration,
    /// Only incarnations with an open connection: bounded by the inbound connections.
    sessions: HashMap<(BrokerId, Uuid), Session>,
    registered: HashMap<BrokerId, Uuid>,
    /// Oldest first: (replaced incarnation, the one that replaced it).
    replaced: HashMap<BrokerId, VecDeque<(Uuid, Uuid)>>,
}

/// Why a handshake's identity is refused: the code and a readable reason.
pub(crate) type Refused = (RefusalCode, String);

impl Identities {
    pub(crate) fn new(session_timeout: Duration) -> Identities {
        Identities {
            session_timeout,
            sessions: HashMap::new(),
            registered: HashMap::new(),
            replaced: HashMap::new(),
        }
    }

    /// The incarnation the metadata registers for `broker`.
    pub(crate) fn registered(&self, broker: BrokerId) -> Option<Uuid> {
        self.registered.get(&broker).copied()
    }

    /// The incarnation that replaced `incarnation` of `broker`, if it was replaced.
    pub(crate) fn replaced_by(&self, broker: BrokerId, incarnation: Uuid) -> Option<Uuid> {
        self.replaced
            .get(&broker)?
            .iter()
            .find(|(old, _)| *old == incarnation)
            .map(|(_, new)| *new)
    }

    /// Whether `incarnation` of `broker` has a live session here at `now`.
    pub(crate) fn is_live(&self, broker: BrokerId, incarnation: Uuid, now: Instant) -> bool {
        self.sessions
            .get(&(broker, incarnation))
            .is_some_and(|s| s.open_connections > 0 && self.fresh(s, now))
    }

    fn fresh(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_heard) < self.session_timeout
    }

    /// Refuses an incarnation the metadata replaced (rule 1 of the module docs).
    fn check_not_replaced(&self, broker: BrokerId, incarnation: Uuid) -> Result<(), Refused> {
        match self.replaced_by(broker, incarnation) {
            None => Ok(()),
            Some(newer) => Err((
                RefusalCode::StaleIncarnation,
                format!(
                    "broker {broker}'s incarnation {incarnation} was replaced by incarnation \
                     {newer} in the cluster metadata: this process is fenced and must stop \
                     (a newer process with node_id {broker} took over)"
                ),
            )),
        }
    }

    /// Decides on a handshake from `incarnation` of `broker` (rules 1 and 2 of the module
    /// docs); an admitted one opens a connection of its session.
    pub(crate) fn admit(
        &mut self,
        broker: BrokerId,
        incarnation: Uuid,
        now: Instant,
    ) -> Result<(), Refused> {
        self.check_not_replaced(broker, incarnation)?;
        if self.registered(broker) != Some(incarnation) {
            let live_other = self.sessions.iter().find(|((b, i), s)| {
                *b == broker && *i != incarnation && s.open_connections > 0 && self.fresh(s, now)
            });
            if let Some(((_, other), session)) = live_other {
                return Err((
                    RefusalCode::DuplicateBroker,
                    format!(
                        "DUPLICATE_BROKER_REGISTRATION: broker {broker} is already connected as \
                         incarnation {other} (heard {} ms ago, session_timeout_ms {}); a second \
                         process with node_id {broker} (incarnation {incarnation}) is refused \
                         while that session is live",
                        now.saturating_duration_since(session.last_heard)
                            .as_millis(),
                        self.session_timeout.as_millis()
                    ),
                ));
            }
        }
        let session = self
            .sessions
            .entry((broker, incarnation))
            .or_insert(Session {
                open_connections: 0,
                last_heard: now,
            });
        session.open_connections += 1;
        session.last_heard = now;
        Ok(())
    }

    /// A frame arrived from an admitted connection: renews its session. Returns the
    /// refusal if the incarnation was replaced meanwhile (the connection must close).
    pub(crate) fn heard(
        &mut self,
        broker: BrokerId,
        incarnation: Uuid,
        now: Instant,
    ) -> Result<(), Refused> {
        self.check_not_replaced(broker, incarnation)?;
        if let Some(session) = self.sessions.get_mut(&(broker, incarnation)) {
            session.last_heard = now;
        }
        Ok(())
    }

    /// An admitted connection ended.
    pub(crate) fn closed(&mut self, broker: BrokerId, incarnation: Uuid) {
        let key = (broker, incarnation);
        if let Some(session) = self.sessions.get_mut(&key) {
            session.open_connections = session.open_connections.saturating_sub(1);
            if session.open_connections == 0 {
                self.sessions.remove(&key);
            }
        }
    }

    /// The metadata registered `broker` as `incarnation`. Returns the incarnation it
    /// replaced (now fenced), if any.
    pub(crate) fn register(&mut self, broker: BrokerId, incarnation: Uuid) -> Option<Uuid> {
        let previous = self.registered.insert(broker, incarnation)?;
        if previous == incarnation {
            return None;
        }
        let replaced = self.replaced.entry(broker).or_default();
        replaced.retain(|(old, _)| *old != incarnation && *old != previous);
        if replaced.len() == REPLACED_PER_BROKER_MAX {
            replaced.pop_front();
        }
        replaced.push_back((previous, incarnation));
        Some(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3))
    }

    #[test]
    fn a_second_incarnation_is_refused_while_the_first_session_is_live() {
        let (first, second, _) = ids();
        let mut identities = Identities::new(TIMEOUT);
        let t0 = Instant::now();
        identities.admit(7, first, t0).expect("first process");
        let (code, reason) = identities
            .admit(7, second, t0 + Duration::from_secs(1))
            .expect_err("duplicate while live");
        assert_eq!(code, RefusalCode::DuplicateBroker);
        assert!(reason.contains("broker 7") && reason.contains("DUPLICATE_BROKER_REGISTRATION"));
        // The first keeps renewing: still refused later.
        identities
            .heard(7, first, t0 + Duration::from_secs(2))
            .expect("renewed");
        assert!(identities
            .admit(7, second, t0 + Duration::from_secs(4))
            .is_err());
        // Silent past the timeout (stopped): replaceable.
        identities
            .admit(7, second, t0 + Duration::from_secs(6))
            .expect("the silent session expired");
    }

    #[test]
    fn a_killed_process_is_replaced_at_once() {
        let (first, second, _) = ids();
        let mut identities = Identities::new(TIMEOUT);
        let t0 = Instant::now();
        identities.admit(7, first, t0).expect("first");
        identities.closed(7, first);
        identities
            .admit(7, second, t0)
            .expect("closed connection: no live session");
    }

    #[test]
    fn a_replaced_incarnation_is_fenced_for_good_and_the_registered_one_admitted() {
        let (first, second, third) = ids();
        let mut identities = Identities::new(TIMEOUT);
        let t0 = Instant::now();
        assert_eq!(identities.register(7, first), None);
        identities.admit(7, first, t0).expect("registered");
        assert_eq!(identities.register(7, second), Some(first));
        let (code, reason) = identities.heard(7, first, t0).expect_err("fenced");
        assert_eq!(code, RefusalCode::StaleIncarnation);
        assert!(reason.contains(&second.to_string()));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            identities.admit(7, first, later).map_err(|(c, _)| c),
            Err(RefusalCode::StaleIncarnation)
        );
        // The registered one is admitted even while an unregistered one is live.
        identities
            .admit(7, third, later)
            .expect("no live session of 7");
        identities.admit(7, second, later).expect("registered");
        assert_eq!(identities.register(7, third), Some(second));
        assert_eq!(identities.replaced_by(7, first), Some(second));
        assert_eq!(identities.replaced_by(7, second), Some(third));
    }

    #[test]
    fn replaced_incarnations_are_bounded_per_broker() {
        let mut identities = Identities::new(TIMEOUT);
        for i in 0..(REPLACED_PER_BROKER_MAX as u128 + 10) {
            identities.register(1, Uuid::from_u128(i + 1));
        }
        assert_eq!(identities.replaced[&1].len(), REPLACED_PER_BROKER_MAX);
    }
}
