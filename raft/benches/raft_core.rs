//! Micro-benchmarks of the raft core (`cargo bench -p rill-raft`). They print
//! numbers and never fail on speed.
//!
//! 1. Entries per second one 3-node group commits in the in-memory cluster
//!    (every Ready persisted to `MemStore`, every message stepped).
//! 2. CPU cost of ticking 10,000 idle groups, as a broker's single timer would:
//!    followers (no leader traffic due) and leaders (heartbeats generated and
//!    their responses stepped back in).

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::Cluster;
use rill_raft::{Config, MemStore, Membership, Message, MessageBody, Raft, Role};

const GROUPS: usize = 10_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    xs[xs.len() / 2]
}

/// Commits `entries` entries of `bytes` each, proposing `pipeline` at a time.
fn commit_throughput(entries: usize, bytes: usize, pipeline: usize) -> f64 {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.uncommitted_bytes_max = usize::MAX / 2;
    });
    c.tracing = false;
    c.node(1).campaign();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    let payload = Bytes::from(vec![0xAB; bytes]);
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < entries {
        for _ in 0..pipeline.min(entries - proposed) {
            c.node(1).propose(payload.clone(), 16).expect("leader");
            proposed += 1;
        }
        c.stabilize();
    }
    let elapsed = start.elapsed();
    let end = c.node(1).last_end_offset();
    assert_eq!(c.node(1).commit_offset(), end, "everything committed");
    entries as f64 / elapsed.as_secs_f64()
}

fn idle_followers_ns_per_tick(rounds: u32) -> f64 {
    let membership = Membership::with_voters([1, 2, 3]);
    let mut groups: Vec<Raft<MemStore>> = (0..GROUPS)
        .map(|g| {
            let mut cfg = Config::new(2, g as u64);
            // Idle followers of a live leader: the timeout is never reached here.
            cfg.election_timeout_ticks = u32::MAX / 4;
            Raft::new(cfg, MemStore::new(membership.clone())).expect("config")
        })
        .collect();
    let start = Instant::now();
    for _ in 0..rounds {
        for r in groups.iter_mut() {
            r.tick();
            black_box(r.has_ready());
        }
    }
    start.elapsed().as_nanos() as f64 / (rounds as f64 * GROUPS as f64)
}

/// Elects node 1 leader of a 3-node group by feeding it the answers directly.
fn make_leader(seed: u64) -> Raft<MemStore> {
    let mut cfg = Config::new(1, seed);
    cfg.pre_vote = false;
    let mut r = Raft::new(cfg, MemStore::new(Membership::with_voters([1, 2, 3]))).expect("config");
    r.campaign();
    drain(&mut r, &mut Vec::new());
    let vote = Message {
        from: 2,
        to: 1,
        term: r.term(),
        body: MessageBody::VoteResponse { granted: true },
    };
    r.step(vote).expect("vote");
    drain(&mut r, &mut Vec::new());
    assert_eq!(r.role(), Role::Leader);
    r
}

/// Handles every Ready like a driver would; collects the outgoing messages.
fn drain(r: &mut Raft<MemStore>, out: &mut Vec<Message>) {
    while r.has_ready() {
        let rd = r.ready();
        out.extend(rd.messages);
        r.store_mut().apply(&rd.persist);
        let durable = rd.persist.into_durable();
        out.extend(rd.after_persist.release(&durable));
        r.advance(durable);
    }
}

fn idle_leaders_ns_per_tick(rounds: u32) -> (f64, usize) {
    let mut groups: Vec<Raft<MemStore>> = (0..GROUPS).map(|g| make_leader(g as u64)).collect();
    let mut out = Vec::new();
    let mut heartbeats = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        for r in groups.iter_mut() {
            r.tick();
            out.clear();
            drain(r, &mut out);
            // The peers answer every heartbeat (coalesced per peer by a driver).
            for m in out.drain(..) {
                if let MessageBody::Heartbeat { .. } = m.body {
                    heartbeats += 1;
                    let reply = Message {
                        from: m.to,
                        to: m.from,
                        term: m.term,
                        body: MessageBody::HeartbeatResponse,
                    };
                    r.step(reply).expect("response");
                }
            }
            drain(r, &mut Vec::new());
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds as f64 * GROUPS as f64);
    (ns, heartbeats)
}

fn main() {
    // `cargo test --benches` runs this binary too: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let runs = if quick { 1 } else { 5 };
    let entries = if quick { 2_000 } else { 100_000 };
    let budget = Duration::from_secs(if quick { 1 } else { 60 });
    let started = Instant::now();

    for (bytes, pipeline) in [(1024usize, 1usize), (1024, 64), (16 * 1024, 64)] {
        let mut rates = Vec::new();
        for _ in 0..runs {
            if started.elapsed() > budget {
                break;
            }
            rates.push(commit_throughput(entries, bytes, pipeline));
        }
        let rate = median(rates);
        println!(
            "raft commit, 3 nodes in memory, {bytes} B entries, {pipeline} proposals per round: {:.0} entries/s ({:.1} MB/s) [median of {runs}]",
            rate,
            rate * bytes as f64 / 1e6
        );
    }

    let rounds = if quick { 10 } else { 200 };
    let follower = median(
        (0..runs)
            .map(|_| idle_followers_ns_per_tick(rounds))
            .collect(),
    );
    println!(
        "tick {GROUPS} idle follower groups: {follower:.1} ns per group-tick ({:.2} ms per broker tick) [median of {runs}]",
        follower * GROUPS as f64 / 1e6
    );
    let leader: Vec<(f64, usize)> = (0..runs)
        .map(|_| idle_leaders_ns_per_tick(rounds))
        .collect();
    let hb = leader[0].1;
    let leader = median(leader.into_iter().map(|(ns, _)| ns).collect());
    println!(
        "tick {GROUPS} idle leader groups (heartbeats out, responses stepped in, {hb} heartbeats per run): {leader:.1} ns per group-tick ({:.2} ms per broker tick) [median of {runs}]",
        leader * GROUPS as f64 / 1e6
    );
}
