//! A synchronous in-memory cluster with a readable trace, shared by the core
//! tests, the golden interaction tests and the benchmark. Delivery happens
//! only when asked, so tests control every interleaving.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use bytes::Bytes;
use rill_raft::{Config, MemStore, Membership, Message, NodeId, Raft, Ready};

/// Nodes, their mailboxes and the network cuts.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Raft<MemStore>>,
    pub configs: BTreeMap<NodeId, Config>,
    /// Durable stores of crashed nodes.
    pub down: BTreeMap<NodeId, MemStore>,
    /// Messages delivered to a node on the next `deliver`.
    pub mailbox: BTreeMap<NodeId, Vec<Message>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// What happened, for golden tests.
    pub trace: String,
    /// Whether to record the trace.
    pub tracing: bool,
}

impl Cluster {
    /// Nodes `ids`, all starting from an empty log with `membership`.
    pub fn new(ids: &[NodeId], membership: &Membership, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            down: BTreeMap::new(),
            mailbox: BTreeMap::new(),
            cut: BTreeSet::new(),
            trace: String::new(),
            tracing: true,
        };
        for &id in ids {
            c.add_node(id, membership, &tweak);
        }
        c
    }

    /// Adds one node with an empty log that knows `membership` as the initial one.
    pub fn add_node(&mut self, id: NodeId, membership: &Membership, tweak: impl Fn(&mut Config)) {
        let mut config = Config::new(id, 1000 + id);
        tweak(&mut config);
        let raft = Raft::new(config.clone(), MemStore::new(membership.clone())).expect("config");
        self.configs.insert(id, config);
        self.nodes.insert(id, raft);
        self.mailbox.insert(id, Vec::new());
    }

    pub fn node(&mut self, id: NodeId) -> &mut Raft<MemStore> {
        self.nodes.get_mut(&id).expect("node is up")
    }

    /// The node that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.role() == rill_raft::Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// Handles one `Ready` of node `id` completely (persist, send, advance).
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(raft) = self.nodes.get_mut(&id) else {
            return false;
        };
        if !raft.has_ready() {
            return false;
        }
        let rd = raft.ready();
        let Ready {
            role,
            commit_offset,
            messages,
            persist,
            after_persist,
        } = rd;
        if self.tracing {
            let t = &mut self.trace;
            writeln!(t, "> {id} handling Ready").unwrap();
            if let Some(r) = role {
                let leader = r.leader.map_or("none".to_string(), |l| l.to_string());
                writeln!(t, "  Role: {:?} term={} leader={leader}", r.role, r.term).unwrap();
            }
            if let Some(hs) = persist.hard_state {
                let vote = hs.voted_for.map_or("none".to_string(), |v| v.to_string());
                writeln!(
                    t,
                    "  HardState term={} vote={vote} commit={}",
                    hs.term, hs.commit_offset
                )
                .unwrap();
            }
            if let Some(r) = &persist.reset_to {
                writeln!(
                    t,
                    "  ResetLog start=(t{} @{}) {}",
                    r.start.term, r.start.offset, r.membership
                )
                .unwrap();
            }
            if let Some(o) = persist.truncate_to {
                writeln!(t, "  TruncateTo {o}").unwrap();
            }
            if !persist.entries.is_empty() {
                writeln!(t, "  Entries: {:?}", persist.entries).unwrap();
            }
            if let Some(c) = commit_offset {
                writeln!(t, "  Commit: {c}").unwrap();
            }
            for m in &messages {
                writeln!(t, "  send {m:?}").unwrap();
            }
            for m in after_persist.peek() {
                writeln!(t, "  send after persist {m:?}").unwrap();
            }
        }
        raft.store_mut().apply(&persist);
        let durable = persist.into_durable();
        let later = after_persist.release(&durable);
        raft.advance(durable);
        for m in messages.into_iter().chain(later) {
            self.enqueue(m);
        }
        true
    }

    fn enqueue(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
            if self.tracing {
                writeln!(self.trace, "  dropped {m:?}").unwrap();
            }
            return;
        }
        self.mailbox.entry(m.to).or_default().push(m);
    }

    /// Steps every queued message into node `id`; returns how many.
    pub fn deliver(&mut self, id: NodeId) -> usize {
        let msgs = std::mem::take(self.mailbox.entry(id).or_default());
        let n = msgs.len();
        if n > 0 && self.tracing {
            writeln!(self.trace, "> {id} receiving messages").unwrap();
        }
        for m in msgs {
            if self.tracing {
                writeln!(self.trace, "  {m:?}").unwrap();
            }
            let Some(raft) = self.nodes.get_mut(&id) else {
                continue;
            };
            if let Err(e) = raft.step(m) {
                if self.tracing {
                    writeln!(self.trace, "  error: {e}").unwrap();
                }
            }
        }
        n
    }

    /// Processes readies and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &id in &ids {
                while self.process_ready(id) {
                    moved = true;
                }
            }
            for &id in &ids {
                if self.deliver(id) > 0 {
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks node `id` `n` times (processing nothing else).
    pub fn tick(&mut self, id: NodeId, n: u32) {
        for _ in 0..n {
            self.node(id).tick();
        }
    }

    /// Proposes `data` (one offset per byte, at least one) at node `id`.
    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<rill_raft::Proposal, String> {
        let count = data.len().max(1) as u64;
        self.node(id)
            .propose(Bytes::copy_from_slice(data.as_bytes()), count)
            .map_err(|e| e.to_string())
    }

    /// Cuts every link between the two sides.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes node `id`: everything not durable is lost, queued mail too.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(raft) = self.nodes.remove(&id) {
            self.down.insert(id, raft.into_store());
            self.mailbox.insert(id, Vec::new());
        }
    }

    /// Restarts a crashed node from its durable store.
    pub fn restart(&mut self, id: NodeId) {
        if let Some(store) = self.down.remove(&id) {
            let config = self.configs[&id].clone();
            self.nodes
                .insert(id, Raft::new(config, store).expect("config"));
        }
    }

    /// Takes the trace recorded so far.
    pub fn take_trace(&mut self) -> String {
        std::mem::take(&mut self.trace)
    }
}
