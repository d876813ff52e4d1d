//! Seeded, replayable simulation of 3- and 5-node groups (in the spirit of
//! TigerBeetle's VOPR): clients propose, the network drops, duplicates, delays
//! and reorders messages, partitions and heals; nodes crash and restart losing
//! everything not yet durable; fsyncs take time; leadership moves; membership
//! changes; retention compacts logs. After every step the checker verifies
//! Raft's safety properties; a failure prints the seed and the replay command.
//!
//! * `cargo test -p rill-raft --test simulator` — 1,000 seeds (500 × 3 nodes,
//!   500 × 5 nodes).
//! * `RILL_SIM_SEEDS=1000000 cargo test --release -p rill-raft --test simulator -- --nocapture`
//!   — a long campaign (`RILL_SIM_SEED_BASE` shifts the range).
//! * `RILL_SIM_SEED=1234 cargo test -p rill-raft --test simulator -- --nocapture`
//!   — replays one seed with its event trace.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use rill_raft::rng::SplitMix64;
use rill_raft::{
    AfterPersist, Config, Entry, EntryKind, LogStore, MemStore, Membership, MembershipChange,
    Message, NodeId, Persist, Raft, Role, Term,
};

/// Simulated ticks per seed in CI (debug build); tuned so 1,000 seeds take
/// well under two minutes on two cores.
const TICKS_PER_SEED: u64 = 1000;
/// Ticks of the final calm phase (network healed, everyone up), which must
/// end with a leader committing a fresh proposal.
const CALM_TICKS_MAX: u64 = 500;
/// Events kept for the failure report.
const TRACE_EVENTS_MAX: usize = 400;
/// Seeds run by default.
const CI_SEEDS: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Faults {
    drop_pct: u64,
    duplicate_pct: u64,
    delay_ticks_max: u64,
    /// Some messages are held for a long time (10-50 ticks): old vote answers
    /// and appends from past terms arriving late.
    long_delay_pct: u64,
    fsync_ticks_max: u64,
    crash_pct: u64,
    restart_pct: u64,
    partition_pct: u64,
    heal_pct: u64,
    propose_pct: u64,
    membership_pct: u64,
    transfer_pct: u64,
    compact_pct: u64,
}

impl Faults {
    /// Each seed draws its own fault mix, so some runs are calm and some brutal.
    fn draw(rng: &mut SplitMix64) -> Faults {
        Faults {
            drop_pct: rng.below(20),
            duplicate_pct: rng.below(10),
            delay_ticks_max: rng.below(4),
            long_delay_pct: rng.below(8),
            fsync_ticks_max: rng.below(5),
            crash_pct: rng.below(4),
            restart_pct: 5 + rng.below(30),
            partition_pct: rng.below(5),
            heal_pct: 3 + rng.below(15),
            propose_pct: 20 + rng.below(70),
            membership_pct: rng.below(6),
            transfer_pct: rng.below(3),
            compact_pct: rng.below(5),
        }
    }

    fn calm() -> Faults {
        Faults {
            drop_pct: 0,
            duplicate_pct: 0,
            delay_ticks_max: 1,
            long_delay_pct: 0,
            fsync_ticks_max: 1,
            crash_pct: 0,
            restart_pct: 100,
            partition_pct: 0,
            heal_pct: 100,
            propose_pct: 10,
            membership_pct: 0,
            transfer_pct: 0,
            compact_pct: 0,
        }
    }
}

struct PendingWrite {
    persist: Persist,
    after: AfterPersist,
    done_at: u64,
    /// Commit offset the node had reported before this Ready.
    prior_commit: u64,
}

struct SimNode {
    config: Config,
    raft: Option<Raft<MemStore>>,
    down_store: Option<MemStore>,
    pending: Option<PendingWrite>,
    inbox: VecDeque<Message>,
    lifetime: u64,
    /// Highest commit offset observed in this lifetime.
    seen_commit: u64,
    /// Commit offset reported by the last Ready.
    reported_commit: u64,
    /// Term in which this node was last seen as leader (for completeness checks).
    checked_leader_term: Option<Term>,
}

struct InFlight {
    deliver_at: u64,
    msg: Message,
}

struct PendingProposal {
    node: NodeId,
    lifetime: u64,
    term: Term,
    end_offset: u64,
    hash: u64,
}

/// What the checker knows about history.
#[derive(Default)]
struct Checker {
    /// term → the only node ever seen leading it.
    leaders: HashMap<Term, NodeId>,
    /// (end, term) → (base, prev term, content hash) of every entry ever written.
    entries_seen: HashMap<(u64, Term), (u64, Term, u64)>,
    /// end → (base, term, hash): every entry any node has reported committed.
    committed: BTreeMap<u64, (u64, Term, u64)>,
    /// end → term of the node that first reported the entry committed (at
    /// least the term in which it was committed).
    commit_terms: HashMap<u64, Term>,
    /// (end, term, hash) of proposals acknowledged to clients.
    acked: Vec<(u64, Term, u64)>,
}

struct Sim {
    rng: SplitMix64,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Vec<InFlight>,
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    checker: Checker,
    proposals: Vec<PendingProposal>,
    proposal_seq: u64,
    trace: VecDeque<String>,
    verbose: bool,
    tracing: bool,
    steps: u64,
}

type Check = Result<(), String>;

fn content_hash(e: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    match &e.kind {
        EntryKind::Data => 0u8.hash(&mut h),
        EntryKind::LeaderChange => 1u8.hash(&mut h),
        EntryKind::Membership(m) => {
            2u8.hash(&mut h);
            m.voters.hash(&mut h);
            m.learners.hash(&mut h);
        }
    }
    e.data.hash(&mut h);
    h.finish()
}

impl Sim {
    fn new(seed: u64, voters: u64, verbose: bool, tracing: bool) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let faults = Faults::draw(&mut rng);
        let membership = Membership::with_voters(1..=voters);
        // Short timeouts against multi-tick delays make elections frequent, which
        // is where Raft's subtle cases (Figure 8) live.
        let election_timeout_ticks = 4 + rng.below(9) as u32;
        let heartbeat_interval_ticks = 1 + rng.below(u64::from(election_timeout_ticks) / 3) as u32;
        let mut nodes = BTreeMap::new();
        // One spare node outside the group, for membership changes.
        for id in 1..=voters + 1 {
            let mut config = Config::new(id, seed.wrapping_mul(31).wrapping_add(id));
            config.election_timeout_ticks = election_timeout_ticks;
            config.heartbeat_interval_ticks = heartbeat_interval_ticks;
            config.pre_vote = rng.below(4) != 0;
            // Half the seeds let idle groups go quiet (the broker's setting).
            config.quiesce = rng.below(2) == 0;
            config.check_quorum = config.pre_vote && rng.below(4) != 0;
            // Small limits, so appends split batches and windows fill up.
            config.append_bytes_max = 70 * (1 + rng.below(8) as usize);
            config.inflight_bytes_max = config.append_bytes_max * (2 + rng.below(7) as usize);
            // Back-pressure: a leader cut off from its quorum stops accepting.
            config.uncommitted_bytes_max = 70 * (5 + rng.below(60) as usize);
            let raft = Raft::new(config.clone(), MemStore::new(membership.clone())).unwrap();
            nodes.insert(
                id,
                SimNode {
                    config,
                    raft: Some(raft),
                    down_store: None,
                    pending: None,
                    inbox: VecDeque::new(),
                    lifetime: 0,
                    seen_commit: 0,
                    reported_commit: 0,
                    checked_leader_term: None,
                },
            );
        }
        // All nodes share pre-vote/check-quorum settings: mixing them is a
        // deployment error, not something the protocol promises to survive.
        let (pv, cq, q) = (
            nodes[&1].config.pre_vote,
            nodes[&1].config.check_quorum,
            nodes[&1].config.quiesce,
        );
        for n in nodes.values_mut() {
            n.config.pre_vote = pv;
            n.config.check_quorum = cq;
            n.config.quiesce = q;
            let store = n.raft.take().unwrap().into_store();
            n.raft = Some(Raft::new(n.config.clone(), store).unwrap());
        }
        // Without pre-vote, a removed voter that never learned of its removal
        // disrupts the group forever (dissertation §4.2.3); Rill always runs
        // with pre-vote, so only pre-vote seeds change membership.
        let mut faults = faults;
        if !pv {
            faults.membership_pct = 0;
        }
        Sim {
            rng,
            now: 0,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            faults,
            checker: Checker::default(),
            proposals: Vec::new(),
            proposal_seq: 0,
            trace: VecDeque::new(),
            verbose,
            tracing,
            steps: 0,
        }
    }

    fn event(&mut self, text: impl FnOnce() -> String) {
        // Tracing costs more than the simulation itself; a failing seed is
        // replayed with tracing on (the run is deterministic).
        if !self.tracing {
            return;
        }
        let line = format!("[t{} #{}] {}", self.now, self.steps, text());
        if self.verbose {
            println!("{line}");
        }
        if self.trace.len() == TRACE_EVENTS_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn pct(&mut self, p: u64) -> bool {
        self.rng.below(100) < p
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    // ------------------------------------------------------------------
    // The network.

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.pct(self.faults.drop_pct) {
            return;
        }
        let copies = if self.pct(self.faults.duplicate_pct) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.pct(self.faults.long_delay_pct) {
                5 + self.rng.below(40)
            } else {
                self.rng.below(self.faults.delay_ticks_max + 1)
            };
            self.net.push(InFlight {
                deliver_at: self.now + delay,
                msg: m.clone(),
            });
        }
    }

    /// Delivers every message due now, in random order (reordering).
    fn deliver_due(&mut self) -> Check {
        loop {
            let now = self.now;
            let (mut due, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|f| f.deliver_at <= now);
            self.net = later;
            if due.is_empty() {
                return Ok(());
            }
            // Fisher-Yates with the seeded generator.
            for i in (1..due.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                due.swap(i, j);
            }
            for InFlight { msg, .. } in due {
                // A partition that appeared after sending still cuts the message.
                if self.cut.contains(&(msg.from, msg.to)) {
                    continue;
                }
                let to = msg.to;
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                if node.raft.is_none() {
                    continue;
                }
                node.inbox.push_back(msg);
                self.drive(to)?;
            }
        }
    }

    // ------------------------------------------------------------------
    // Driving one node: the same loop a broker runs, with fsyncs that take time.

    fn drive(&mut self, id: NodeId) -> Check {
        loop {
            let now = self.now;
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            if let Some(p) = &node.pending {
                if p.done_at > now {
                    return Ok(());
                }
                let PendingWrite {
                    persist,
                    after,
                    prior_commit,
                    ..
                } = node.pending.take().unwrap();
                self.apply_persist(id, &persist, prior_commit)?;
                let node = self.nodes.get_mut(&id).unwrap();
                let raft = node.raft.as_mut().unwrap();
                let durable = persist.into_durable();
                let msgs = after.release(&durable);
                raft.advance(durable);
                self.steps += 1;
                for m in msgs {
                    self.send(m);
                }
                self.observe(id)?;
                continue;
            }
            if let Some(m) = node.inbox.pop_front() {
                let text = self.tracing.then(|| format!("{id} <- {m:?}"));
                let result = raft.step(m);
                self.steps += 1;
                self.event(|| text.unwrap_or_default());
                if let Err(e) = result {
                    self.event(|| format!("{id} rejected message: {e}"));
                }
                self.observe(id)?;
                continue;
            }
            if raft.has_ready() {
                let rd = raft.ready();
                let fsync = self.rng.below(self.faults.fsync_ticks_max + 1);
                if let Some(r) = rd.role {
                    self.event(|| {
                        format!(
                            "{id} role {:?} term {} leader {:?}",
                            r.role, r.term, r.leader
                        )
                    });
                }
                if let Some(c) = rd.commit_offset {
                    self.event(|| format!("{id} commit {c}"));
                }
                let node = self.nodes.get_mut(&id).unwrap();
                let prior_commit = node.reported_commit;
                if let Some(c) = rd.commit_offset {
                    node.reported_commit = c;
                }
                node.pending = Some(PendingWrite {
                    persist: rd.persist,
                    after: rd.after_persist,
                    done_at: now + fsync,
                    prior_commit,
                });
                for m in rd.messages {
                    self.send(m);
                }
                // Crashes also strike right after a node sent what needs no
                // fsync but before its fsync completed.
                if fsync > 0 && self.rng.below(40) < self.faults.crash_pct {
                    self.crash(id);
                    return Ok(());
                }
                continue;
            }
            return Ok(());
        }
    }

    /// The simulated fsync completes: the store (durable by definition) takes
    /// the changes. Checks log matching and that nothing committed is removed.
    fn apply_persist(&mut self, id: NodeId, p: &Persist, prior_commit: u64) -> Check {
        let node = self.nodes.get_mut(&id).unwrap();
        let raft = node.raft.as_mut().unwrap();
        if let Some(t) = p.truncate_to {
            // A node never drops what it knows is committed. Other entries that
            // were committed elsewhere may still be overwritten on a node that
            // did not know, but only by a stale leader of an older term than
            // the commit: a leader of that term or later has the entry (§5.4).
            let term_now = raft.term();
            if t < prior_commit {
                return Err(format!(
                    "node {id} truncates to {t} below its commit offset {prior_commit}"
                ));
            }
            for e in raft.store().entries().iter().filter(|e| e.end_offset > t) {
                if let Some(&(_, term, hash)) = self.checker.committed.get(&e.end_offset) {
                    let commit_term = self.checker.commit_terms[&e.end_offset];
                    if term == e.term && hash == content_hash(e) && term_now >= commit_term {
                        return Err(format!(
                            "node {id} in term {term_now} truncated {e:?}, committed by term {commit_term} (truncate_to {t})"
                        ));
                    }
                }
            }
        }
        let first_new = p.entries.first().map(|e| e.base_offset);
        raft.store_mut().apply(p);
        if let Some(base) = first_new {
            let store = raft.store();
            let entries = store.entries();
            let i = entries.partition_point(|e| e.base_offset < base);
            for e in &entries[i..] {
                let prev_term = store
                    .term_of_entry_ending_at(e.base_offset)
                    .expect("store is contiguous");
                let key = (e.end_offset, e.term);
                let value = (e.base_offset, prev_term, content_hash(e));
                match self.checker.entries_seen.get(&key) {
                    Some(v) if *v != value => {
                        return Err(format!(
                            "log matching: node {id} wrote {e:?} after term {prev_term}, but another log has (end {}, term {}) with (base, prev term, hash) {v:?}",
                            e.end_offset, e.term
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.checker.entries_seen.insert(key, value);
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // The checker, run after every step of a node.

    fn observe(&mut self, id: NodeId) -> Check {
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_ref() else {
            return Ok(());
        };
        let (role, term, commit) = (raft.role(), raft.term(), raft.commit_offset());
        if commit > raft.last_end_offset() {
            return Err(format!(
                "node {id} commit {commit} beyond its log end {}",
                raft.last_end_offset()
            ));
        }
        // Commit offsets never go back within a node's lifetime.
        if commit < node.seen_commit {
            return Err(format!(
                "node {id} commit went back from {} to {commit}",
                node.seen_commit
            ));
        }
        // At most one leader per term.
        if role == Role::Leader {
            if let Some(&other) = self.checker.leaders.get(&term) {
                if other != id {
                    return Err(format!("two leaders in term {term}: {other} and {id}"));
                }
            }
            self.checker.leaders.insert(term, id);
            if node.checked_leader_term != Some(term) {
                node.checked_leader_term = Some(term);
                check_leader_completeness(&self.checker, id, raft)?;
            }
        }
        if commit > node.seen_commit {
            let from = node.seen_commit.max(raft.log_start().offset);
            node.seen_commit = commit;
            check_committed(&mut self.checker, id, raft, from, commit)?;
            let lifetime = node.lifetime;
            let mut acked = Vec::new();
            self.proposals.retain(|p| {
                if p.node != id || p.lifetime != lifetime || p.end_offset > commit {
                    return true;
                }
                if raft.term_of_entry_ending_at(p.end_offset) == Some(p.term) {
                    acked.push((p.end_offset, p.term, p.hash));
                }
                false
            });
            for a in acked {
                match self.checker.committed.get(&a.0) {
                    Some(&(_, t, h)) if t == a.1 && h == a.2 => {}
                    other => {
                        return Err(format!(
                            "acknowledged proposal {a:?} differs from the committed entry {other:?}"
                        ))
                    }
                }
                self.checker.acked.push(a);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // One tick of the world.

    fn tick(&mut self) -> Check {
        self.now += 1;
        self.inject_faults()?;
        self.client_actions()?;
        self.wake_orphans();
        for id in self.live_ids() {
            let node = self.nodes.get_mut(&id).unwrap();
            if node.pending.is_none() {
                node.raft.as_mut().unwrap().tick();
                self.steps += 1;
            }
            self.drive(id)?;
            self.observe(id)?;
        }
        self.deliver_due()?;
        for id in self.live_ids() {
            self.drive(id)?;
        }
        Ok(())
    }

    /// The broker's node-liveness check, as an oracle: a quiet node that cannot
    /// hear from another member's node (down, or the link cut) is woken. Only
    /// liveness depends on it; safety must hold whatever it says.
    fn wake_orphans(&mut self) {
        for id in self.live_ids() {
            let node = &self.nodes[&id];
            let raft = node.raft.as_ref().unwrap();
            if node.pending.is_some() || !raft.is_quiesced() {
                continue;
            }
            let membership = raft.membership();
            let silent = |m: NodeId| {
                self.nodes.get(&m).is_none_or(|n| n.raft.is_none()) || self.cut.contains(&(m, id))
            };
            let orphaned = membership
                .voters
                .iter()
                .chain(membership.learners.iter())
                .any(|&m| m != id && silent(m));
            let leader_lost = raft.leader().is_none_or(silent);
            if orphaned {
                self.nodes
                    .get_mut(&id)
                    .unwrap()
                    .raft
                    .as_mut()
                    .unwrap()
                    .unquiesce(leader_lost);
                self.event(|| format!("{id} UNQUIESCE"));
            }
        }
    }

    /// The node stops; only its store (what was durable) survives.
    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(raft) = node.raft.take() {
            node.down_store = Some(raft.into_store());
            node.pending = None;
            node.inbox.clear();
            self.event(|| format!("{id} CRASH"));
        }
    }

    fn inject_faults(&mut self) -> Check {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        if self.pct(self.faults.crash_pct) {
            // Half the crashes hit a node while its fsync is outstanding, the
            // window in which not-yet-durable state is lost.
            let writing: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|id| self.nodes[id].pending.is_some())
                .collect();
            let id = if !writing.is_empty() && self.rng.below(2) == 0 {
                writing[self.rng.below(writing.len() as u64) as usize]
            } else {
                ids[self.rng.below(ids.len() as u64) as usize]
            };
            self.crash(id);
        }
        let down: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| self.nodes[id].raft.is_none())
            .collect();
        for id in down {
            if self.pct(self.faults.restart_pct) {
                let node = self.nodes.get_mut(&id).unwrap();
                node.lifetime += 1;
                node.config.seed = node.config.seed.wrapping_add(7919);
                let store = node.down_store.take().unwrap();
                node.raft = Some(Raft::new(node.config.clone(), store).unwrap());
                node.seen_commit = 0;
                node.reported_commit = node.raft.as_ref().unwrap().commit_offset();
                node.checked_leader_term = None;
                self.event(|| format!("{id} RESTART"));
                self.observe(id)?;
            }
        }
        if self.pct(self.faults.partition_pct) {
            self.cut.clear();
            let mut side = BTreeSet::new();
            for &id in &ids {
                if self.rng.below(2) == 0 {
                    side.insert(id);
                }
            }
            for &a in &ids {
                for &b in &ids {
                    if side.contains(&a) != side.contains(&b) {
                        self.cut.insert((a, b));
                    }
                }
            }
            self.event(|| format!("PARTITION {side:?} | rest"));
        } else if !self.cut.is_empty() && self.pct(self.faults.heal_pct) {
            self.cut.clear();
            self.event(|| "HEAL".to_string());
        }
        if self.pct(self.faults.compact_pct) {
            let id = ids[self.rng.below(ids.len() as u64) as usize];
            let node = self.nodes.get_mut(&id).unwrap();
            if node.pending.is_none() {
                if let Some(raft) = node.raft.as_mut() {
                    let commit = raft.commit_offset();
                    let store = raft.store();
                    if commit > store.log_start().offset
                        && store.term_of_entry_ending_at(commit).is_some()
                    {
                        raft.store_mut().compact_to(commit);
                        self.event(|| format!("{id} COMPACT to {commit}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn client_actions(&mut self) -> Check {
        // Leaders propose also while their Ready is being persisted (the broker does:
        // a produce during the leader's fsync is proposed and replicated at once).
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        for id in leaders {
            if self.pct(self.faults.propose_pct) {
                self.proposal_seq += 1;
                let n = self.proposal_seq;
                let data = Bytes::from(format!("p{n}"));
                let count = 1 + self.rng.below(3);
                let node = self.nodes.get_mut(&id).unwrap();
                let lifetime = node.lifetime;
                let raft = node.raft.as_mut().unwrap();
                if let Ok(p) = raft.propose(data.clone(), count) {
                    let e = Entry {
                        term: p.term,
                        base_offset: p.base_offset,
                        end_offset: p.end_offset,
                        kind: EntryKind::Data,
                        data,
                    };
                    self.proposals.push(PendingProposal {
                        node: id,
                        lifetime,
                        term: p.term,
                        end_offset: p.end_offset,
                        hash: content_hash(&e),
                    });
                    self.steps += 1;
                    self.event(|| format!("{id} PROPOSE {e:?}"));
                    // Appends of a proposal made during a persist go out at once.
                    let msgs = self
                        .nodes
                        .get_mut(&id)
                        .unwrap()
                        .raft
                        .as_mut()
                        .unwrap()
                        .take_messages();
                    for m in msgs {
                        self.send(m);
                    }
                }
            }
            // Membership changes wait for the node's persist, as the broker's do.
            if self.nodes[&id].pending.is_none() && self.pct(self.faults.membership_pct) {
                let node = &self.nodes[&id];
                let m = node.raft.as_ref().unwrap().membership().clone();
                let all: Vec<NodeId> = self.nodes.keys().copied().collect();
                let outsiders: Vec<NodeId> =
                    all.iter().copied().filter(|n| !m.contains(*n)).collect();
                let change = if let Some(&l) = m.learners.iter().next() {
                    MembershipChange::PromoteLearner(l)
                } else if !outsiders.is_empty() && self.rng.below(2) == 0 {
                    MembershipChange::AddLearner(
                        outsiders[self.rng.below(outsiders.len() as u64) as usize],
                    )
                } else if m.voters.len() > 2 {
                    let v: Vec<NodeId> = m.voters.iter().copied().collect();
                    MembershipChange::Remove(v[self.rng.below(v.len() as u64) as usize])
                } else {
                    continue;
                };
                let raft = self.nodes.get_mut(&id).unwrap().raft.as_mut().unwrap();
                let result = raft.propose_membership_change(change);
                self.steps += 1;
                self.event(|| format!("{id} MEMBERSHIP {change:?} -> {result:?}"));
            }
            if self.nodes[&id].pending.is_none() && self.pct(self.faults.transfer_pct) {
                let raft = self.nodes.get_mut(&id).unwrap().raft.as_mut().unwrap();
                let voters: Vec<NodeId> = raft.membership().voters.iter().copied().collect();
                let to = voters[self.rng.below(voters.len() as u64) as usize];
                let result = raft.transfer_leadership(to);
                self.steps += 1;
                self.event(|| format!("{id} TRANSFER to {to} -> {result:?}"));
            }
            self.drive(id)?;
            self.observe(id)?;
        }
        Ok(())
    }

    fn run(&mut self) -> Check {
        for _ in 0..TICKS_PER_SEED {
            self.tick()?;
        }
        // Calm phase: heal everything; a leader must emerge and commit.
        self.faults = Faults::calm();
        self.cut.clear();
        self.event(|| "CALM: heal, restart all, no faults".to_string());
        let target = self
            .checker
            .committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        for _ in 0..CALM_TICKS_MAX {
            self.tick()?;
            let progressed = self
                .checker
                .committed
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0);
            let acked_fresh = self.checker.acked.iter().any(|a| a.0 > target);
            if progressed > target && acked_fresh {
                return Ok(());
            }
        }
        Err(format!(
            "liveness: no fresh proposal committed within {CALM_TICKS_MAX} calm ticks"
        ))
    }
}

/// A new leader's log holds every committed entry and every acknowledged
/// proposal (Raft §5.4, Leader Completeness).
fn check_leader_completeness(checker: &Checker, id: NodeId, raft: &Raft<MemStore>) -> Check {
    let start = raft.log_start().offset;
    if let Some((&end, &(_, term, _))) = checker.committed.iter().next_back() {
        if end > start && raft.term_of_entry_ending_at(end) != Some(term) {
            return Err(format!(
                "leader completeness: leader {id} of term {} lacks committed entry (end {end}, term {term})",
                raft.term()
            ));
        }
    }
    for &(end, term, _) in &checker.acked {
        if end > start && raft.term_of_entry_ending_at(end) != Some(term) {
            return Err(format!(
                "leader {id} of term {} lacks acknowledged proposal (end {end}, term {term})",
                raft.term()
            ));
        }
    }
    Ok(())
}

/// Entries a node reports committed in `(from, to]` agree with everything
/// reported committed before, and extend the committed history.
fn check_committed(
    checker: &mut Checker,
    id: NodeId,
    raft: &Raft<MemStore>,
    from: u64,
    to: u64,
) -> Check {
    let mut entries = Vec::new();
    raft.read_entries(from, usize::MAX, &mut entries)
        .map_err(|e| format!("node {id} cannot read its committed entries: {e}"))?;
    for e in entries.iter().take_while(|e| e.end_offset <= to) {
        let value = (e.base_offset, e.term, content_hash(e));
        match checker.committed.get(&e.end_offset) {
            Some(v) if *v != value => {
                return Err(format!(
                    "committed entry changed: node {id} commits {e:?}, but (base, term, hash) {v:?} was committed at that end"
                ));
            }
            Some(_) => {}
            None => {
                let before = checker.committed.range(..e.end_offset).next_back();
                let after = checker.committed.range(e.end_offset + 1..).next();
                if before.is_some_and(|(end, _)| *end > e.base_offset)
                    || after.is_some_and(|(_, (base, _, _))| *base < e.end_offset)
                {
                    return Err(format!(
                        "committed entry {e:?} at node {id} overlaps another committed entry"
                    ));
                }
                checker.committed.insert(e.end_offset, value);
                checker.commit_terms.insert(e.end_offset, raft.term());
            }
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Seeds with `seed % 2 == parity` run with `voters` nodes.
fn campaign(voters: u64, parity: u64) {
    if let Some(seed) = env_u64("RILL_SIM_SEED") {
        if seed % 2 == parity {
            run_seed(seed, voters, true);
        }
        return;
    }
    let total = env_u64("RILL_SIM_SEEDS").unwrap_or(CI_SEEDS);
    let base = env_u64("RILL_SIM_SEED_BASE").unwrap_or(0);
    let mut ran = 0u64;
    let mut steps = 0u64;
    let mut seed = base * 2 + parity;
    while ran < total / 2 {
        steps += run_seed(seed, voters, false);
        ran += 1;
        seed += 2;
        if ran % 10_000 == 0 {
            println!("{voters} nodes: {ran} seeds passed");
        }
    }
    println!(
        "{voters} nodes: {ran} seeds passed (seeds {} to {} step {}), {steps} node steps checked",
        base * 2 + parity,
        seed - 2,
        2
    );
}

fn run_seed(seed: u64, voters: u64, verbose: bool) -> u64 {
    let outcome = simulate(seed, voters, verbose, verbose);
    match outcome {
        Ok(steps) => steps,
        Err(violation) => {
            if !verbose {
                // Replay with the event trace on to show how it happened.
                let _ = simulate(seed, voters, false, true);
            }
            fail(seed, &violation)
        }
    }
}

/// Runs one seed; a violation or a panic in the core becomes `Err`.
fn simulate(seed: u64, voters: u64, verbose: bool, tracing: bool) -> Result<u64, String> {
    let outcome = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, voters, verbose, tracing);
        let result = sim.run();
        if tracing && result.is_err() && !verbose {
            for line in &sim.trace {
                eprintln!("{line}");
            }
            eprintln!("faults: {:?}", sim.faults);
        }
        result.map(|()| sim.steps)
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {what}"))
        }
    }
}

fn fail(seed: u64, violation: &str) -> ! {
    panic!(
        "simulation failed: {violation}\n  seed {seed}\n  replay: RILL_SIM_SEED={seed} cargo test -p rill-raft --test simulator -- --nocapture"
    );
}

#[test]
fn three_node_groups_stay_safe_under_faults() {
    campaign(3, 0);
}

#[test]
fn five_node_groups_stay_safe_under_faults() {
    campaign(5, 1);
}
