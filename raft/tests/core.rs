//! Behaviour of the core through its public API, one property per test.

#[path = "support/cluster.rs"]
mod cluster;

use bytes::Bytes;
use cluster::Cluster;
use rill_raft::{
    AppendResult, Entry, EntryKind, Membership, MembershipChange, MessageBody, MessageError,
    ProposeError, ReplicationState, Role,
};

fn three() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |_| {});
    c.tracing = false;
    c
}

fn elect(c: &mut Cluster, id: u64) {
    c.node(id).campaign();
    c.stabilize();
    assert_eq!(c.node(id).role(), Role::Leader);
}

#[test]
fn three_nodes_elect_one_leader_which_commits_its_leader_change_entry() {
    let mut c = three();
    elect(&mut c, 1);
    for id in [2, 3] {
        assert_eq!(c.node(id).role(), Role::Follower);
        assert_eq!(c.node(id).leader(), Some(1));
    }
    // The no-op of term 1 covers offset 0 and is committed everywhere after a heartbeat.
    assert_eq!(c.node(1).commit_offset(), 1);
    c.tick(1, 2);
    c.stabilize();
    assert_eq!(c.node(2).commit_offset(), 1);
}

#[test]
fn proposals_replicate_and_commit_on_a_majority() {
    let mut c = three();
    elect(&mut c, 1);
    let p = c.propose(1, "hello").unwrap();
    assert_eq!((p.base_offset, p.end_offset), (1, 6));
    c.stabilize();
    assert_eq!(c.node(1).commit_offset(), 6);
    // With node 3 cut off, a majority (1, 2) still commits.
    c.partition(&[3], &[1, 2]);
    c.propose(1, "ab").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).commit_offset(), 8);
    assert_eq!(c.node(3).last_end_offset(), 6);
}

#[test]
fn followers_refuse_proposals_with_the_known_leader() {
    let mut c = three();
    elect(&mut c, 1);
    assert_eq!(
        c.node(2).propose(Bytes::from_static(b"x"), 1),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        c.node(1).propose(Bytes::new(), 0),
        Err(ProposeError::EmptyEntry)
    );
}

#[test]
fn follower_with_divergent_tail_truncates_to_leader_log() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.check_quorum = false;
    });
    c.tracing = false;
    elect(&mut c, 1);
    // Leader 1 appends entries only it has.
    c.partition(&[1], &[2, 3]);
    c.propose(1, "lost1").unwrap();
    c.propose(1, "lost2").unwrap();
    c.stabilize();
    let old_end = c.node(1).last_end_offset();
    // 2 becomes leader in term 2 and writes different entries.
    elect(&mut c, 2);
    c.propose(2, "kept").unwrap();
    c.stabilize();
    c.heal();
    c.tick(2, 2);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).last_end_offset(), c.node(2).last_end_offset());
    assert_ne!(c.node(1).last_end_offset(), old_end);
    let end = c.node(2).last_end_offset();
    assert_eq!(c.node(1).term_of_entry_ending_at(end), Some(2));
    assert_eq!(c.node(1).commit_offset(), c.node(2).commit_offset());
}

#[test]
fn a_new_leader_commits_earlier_terms_only_through_an_entry_of_its_own() {
    // One entry per append, so acknowledgements of the old entry arrive alone.
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.check_quorum = false;
        cfg.append_bytes_max = 64;
    });
    c.tracing = false;
    elect(&mut c, 1);
    c.partition(&[1], &[2, 3]);
    c.propose(1, "old").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).commit_offset(), 1);
    // Node 1 restarts and wins term 2 with its longer log.
    c.crash(1);
    c.restart(1);
    c.heal();
    c.node(1).campaign();
    let mut saw_old_acked_uncommitted = false;
    for _ in 0..100 {
        for id in [1, 2, 3] {
            while c.process_ready(id) {}
            c.deliver(id);
        }
        let n1 = c.node(1);
        if n1.role() != Role::Leader {
            continue;
        }
        let commit = n1.commit_offset();
        if commit > 1 {
            assert_eq!(n1.term_of_entry_ending_at(commit), Some(2));
        }
        if n1.progress(2).unwrap().match_end_offset == 4 && commit == 1 {
            saw_old_acked_uncommitted = true;
        }
    }
    assert!(saw_old_acked_uncommitted);
    assert_eq!(c.node(1).commit_offset(), 5);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = three();
    elect(&mut c, 1);
    c.partition(&[1], &[2, 3]);
    for _ in 0..25 {
        c.tick(1, 1);
        c.stabilize();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), None);
}

#[test]
fn pre_vote_keeps_a_returning_partitioned_node_from_disrupting_the_leader() {
    let mut c = three();
    elect(&mut c, 1);
    c.partition(&[3], &[1, 2]);
    for _ in 0..50 {
        c.tick(3, 1);
        c.stabilize();
    }
    // Pre-votes failed, so node 3 never bumped its term.
    assert_eq!(c.node(3).term(), 1);
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    c.heal();
    c.tick(1, 2);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).term(), 1);
    assert_eq!(c.node(3).leader(), Some(1));
}

#[test]
fn in_flight_bytes_per_follower_are_bounded() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.append_bytes_max = 1000;
        cfg.inflight_bytes_max = 3000;
    });
    c.tracing = false;
    elect(&mut c, 1);
    for _ in 0..20 {
        c.node(1).propose(Bytes::from(vec![7u8; 900]), 1).unwrap();
        c.process_ready(1);
    }
    let pr = c.node(1).progress(2).unwrap();
    assert_eq!(pr.state, ReplicationState::Replicate);
    assert!(pr.inflight_bytes <= 3000, "{}", pr.inflight_bytes);
    let queued: usize = c.mailbox[&2].iter().map(|m| m.entry_bytes()).sum();
    assert!(queued <= 3000, "{queued}");
    c.stabilize();
    assert_eq!(c.node(2).last_end_offset(), c.node(1).last_end_offset());
    assert_eq!(c.node(1).commit_offset(), c.node(1).last_end_offset());
}

#[test]
fn a_follower_behind_the_leader_log_start_is_reset_to_it() {
    let mut c = three();
    elect(&mut c, 1);
    c.partition(&[3], &[1, 2]);
    for i in 0..5 {
        c.propose(1, &format!("e{i}")).unwrap();
        c.stabilize();
    }
    let commit = c.node(1).commit_offset();
    // Retention on the leader removes everything committed.
    c.node(1).store_mut().compact_to(commit);
    c.heal();
    // The first heartbeat answer shows node 3 made no progress, the second
    // confirms it and restarts the probe, which finds the log start.
    for _ in 0..2 {
        c.tick(1, 2);
        c.stabilize();
    }
    assert_eq!(c.node(3).log_start().offset, commit);
    assert_eq!(c.node(3).last_end_offset(), c.node(1).last_end_offset());
    assert_eq!(c.node(3).commit_offset(), c.node(1).commit_offset());
}

#[test]
fn a_follower_that_lost_its_log_catches_up_once_the_leader_forgets_its_match() {
    let mut c = three();
    elect(&mut c, 1);
    for i in 0..3 {
        c.propose(1, &format!("e{i}")).unwrap();
        c.stabilize();
    }
    let end = c.node(1).last_end_offset();
    assert_eq!(c.node(3).last_end_offset(), end);
    // Node 3's disk is replaced: it comes back with an empty log, which Raft's model
    // rules out. The leader still counts its old match and takes its rejections for
    // stale ones, so it never repairs it.
    c.crash(3);
    c.add_node(3, &Membership::with_voters([1, 2, 3]), |_| {});
    for _ in 0..3 {
        c.tick(1, 2);
        c.stabilize();
    }
    assert_eq!(
        c.node(3).last_end_offset(),
        0,
        "repaired without being told"
    );
    // Told that node 3 restarted, the leader probes it again and it catches up.
    c.node(1).forget_follower_match(3);
    c.stabilize();
    c.tick(1, 2);
    c.stabilize();
    assert_eq!(c.node(3).last_end_offset(), end);
    assert_eq!(c.node(3).commit_offset(), c.node(1).commit_offset());
    // Forgetting an intact follower's match costs a probe and nothing else.
    c.node(1).forget_follower_match(2);
    c.stabilize();
    c.propose(1, "after").unwrap();
    c.stabilize();
    assert_eq!(c.node(2).last_end_offset(), c.node(1).last_end_offset());
}

#[test]
fn a_quiet_leader_told_of_a_restarted_follower_retries_until_it_caught_up() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.quiesce = true;
    });
    c.tracing = false;
    elect(&mut c, 1);
    c.propose(1, "e").unwrap();
    c.stabilize();
    for _ in 0..3 {
        c.tick(1, 2);
        c.stabilize();
    }
    assert!(c.node(1).is_quiesced(), "an idle group goes quiet");
    let end = c.node(1).last_end_offset();
    // Node 3 comes back with an empty log, and the leader's probe to it is lost (the
    // connection to the restarted broker is not up yet).
    c.crash(3);
    c.add_node(3, &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.quiesce = true
    });
    c.partition(&[3], &[1, 2]);
    c.node(1).forget_follower_match(3);
    c.stabilize();
    assert!(
        !c.node(1).is_quiesced(),
        "a leader whose follower must catch up keeps ticking"
    );
    // Once the link is back, the leader's heartbeats find node 3 and repair it.
    c.heal();
    for _ in 0..3 {
        c.tick(1, 2);
        c.stabilize();
    }
    assert_eq!(c.node(3).last_end_offset(), end);
}

#[test]
fn leadership_transfer_hands_over_to_a_caught_up_voter() {
    let mut c = three();
    elect(&mut c, 1);
    c.propose(1, "x").unwrap();
    c.stabilize();
    c.node(1).transfer_leadership(3).unwrap();
    assert_eq!(
        c.node(1).propose(Bytes::from_static(b"y"), 1),
        Err(ProposeError::TransferInProgress)
    );
    c.stabilize();
    assert_eq!(c.node(3).role(), Role::Leader);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), Some(3));
}

#[test]
fn a_learner_catches_up_before_it_can_be_promoted_and_then_votes() {
    let mut c = three();
    c.add_node(4, &Membership::with_voters([1, 2, 3]), |_| {});
    elect(&mut c, 1);
    c.node(1)
        .propose_membership_change(MembershipChange::AddLearner(4))
        .unwrap();
    // Before anything reached node 4 it cannot be promoted.
    c.process_ready(1);
    assert_eq!(
        c.node(1)
            .propose_membership_change(MembershipChange::PromoteLearner(4)),
        Err(ProposeError::MembershipChangePending)
    );
    c.stabilize();
    assert_eq!(c.node(4).membership().learners.len(), 1);
    assert_eq!(c.node(4).last_end_offset(), c.node(1).last_end_offset());
    c.node(1)
        .propose_membership_change(MembershipChange::PromoteLearner(4))
        .unwrap();
    c.stabilize();
    assert!(c.node(4).membership().is_voter(4));
    // Four voters: two nodes cut off means no commit.
    c.partition(&[3, 4], &[1, 2]);
    c.propose(1, "q").unwrap();
    c.stabilize();
    assert!(c.node(1).commit_offset() < c.node(1).last_end_offset());
}

#[test]
fn a_removed_leader_steps_down_once_the_change_commits() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.check_quorum = false;
    });
    c.tracing = false;
    elect(&mut c, 1);
    c.node(1)
        .propose_membership_change(MembershipChange::Remove(1))
        .unwrap();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(!c.node(2).membership().contains(1));
    // 2 and 3 elect a leader among themselves.
    c.node(2).campaign();
    c.stabilize();
    assert_eq!(c.node(2).role(), Role::Leader);
}

#[test]
fn malformed_appends_are_rejected_with_a_typed_error_and_change_nothing() {
    let mut c = three();
    elect(&mut c, 1);
    let bad = rill_raft::Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append {
            prev_end_offset: 1,
            prev_term: 1,
            entries: vec![Entry {
                term: 1,
                base_offset: 5, // gap
                end_offset: 6,
                kind: EntryKind::Data,
                data: Bytes::new(),
            }],
            commit_offset: 1,
        },
    };
    let before = c.node(2).last_end_offset();
    assert_eq!(
        c.node(2).step(bad),
        Err(MessageError::MalformedEntries { from: 1 })
    );
    assert_eq!(c.node(2).last_end_offset(), before);
}

#[test]
fn vote_grants_and_append_acks_wait_until_the_persist_is_durable() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.pre_vote = false;
    });
    c.tracing = false;
    c.node(1).campaign();
    c.process_ready(1);
    c.deliver(2);
    let rd = c.node(2).ready();
    assert!(rd.messages.is_empty());
    assert!(matches!(
        rd.after_persist.peek(),
        [m] if m.body == MessageBody::VoteResponse { granted: true }
    ));
    assert_eq!(rd.persist.hard_state.unwrap().voted_for, Some(1));
    assert!(rd.persist.sync_required());
    c.node(2).store_mut().apply(&rd.persist);
    let durable = rd.persist.into_durable();
    let grant = rd.after_persist.release(&durable);
    c.node(2).advance(durable);
    c.node(1).step(grant[0].clone()).unwrap();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    // An append acknowledgement is never among the immediate messages.
    c.propose(1, "z").unwrap();
    c.process_ready(1);
    c.deliver(2);
    let rd = c.node(2).ready();
    assert!(rd.messages.is_empty());
    assert!(rd.after_persist.peek().iter().any(|m| matches!(
        m.body,
        MessageBody::AppendResponse(AppendResult::Accepted { .. })
    )));
    assert!(!rd.persist.entries.is_empty());
    c.node(2).store_mut().apply(&rd.persist);
    let durable = rd.persist.into_durable();
    let _ = rd.after_persist.release(&durable);
    c.node(2).advance(durable);
}

#[test]
fn a_lone_voter_elects_itself_once_its_vote_is_durable() {
    let mut c = Cluster::new(&[1], &Membership::with_voters([1]), |_| {});
    c.tracing = false;
    c.node(1).campaign();
    // A lone voter wins its pre-vote at once; it stays candidate until its vote is durable.
    assert_eq!(c.node(1).role(), Role::Candidate);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    c.propose(1, "solo").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).commit_offset(), 5);
}

#[test]
fn backtracking_skips_a_whole_divergent_term_in_one_round_trip() {
    let mut c = Cluster::new(
        &[1, 2, 3, 4, 5],
        &Membership::with_voters([1, 2, 3, 4, 5]),
        |cfg| cfg.check_quorum = false,
    );
    c.tracing = false;
    elect(&mut c, 1);
    c.partition(&[1, 3], &[2, 4, 5]);
    for i in 0..50 {
        c.propose(1, &format!("divergent{i}")).unwrap();
    }
    c.stabilize();
    assert!(c.node(3).last_end_offset() > 400);
    elect(&mut c, 2);
    c.propose(2, "x").unwrap();
    c.stabilize();
    elect(&mut c, 4);
    c.heal();
    c.tracing = true;
    c.take_trace();
    c.tick(4, 2);
    c.stabilize();
    let trace = c.take_trace();
    let rejections = trace
        .lines()
        .filter(|l| l.contains("3->4") && l.contains("rejected") && l.starts_with("  send"))
        .count();
    assert_eq!(rejections, 1, "{trace}");
    assert_eq!(c.node(3).last_end_offset(), c.node(4).last_end_offset());
}

#[test]
fn a_leader_without_acknowledgements_applies_back_pressure() {
    let mut c = Cluster::new(&[1, 2, 3], &Membership::with_voters([1, 2, 3]), |cfg| {
        cfg.uncommitted_bytes_max = 1000;
    });
    c.tracing = false;
    elect(&mut c, 1);
    c.partition(&[1], &[2, 3]);
    let mut accepted = 0;
    let refused = loop {
        let room = c.node(1).has_room_for(100);
        match c.node(1).propose(Bytes::from(vec![1u8; 100]), 1) {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(!room, "has_room_for promised room the proposal did not get");
                break e;
            }
        }
        assert!(room, "has_room_for refused what the proposal accepted");
        assert!(accepted < 100, "no back-pressure");
    };
    assert_eq!(
        refused,
        ProposeError::UncommittedBytesExceeded { limit_bytes: 1000 }
    );
    assert_eq!(accepted, 6, "164 bytes charged per entry");
}

#[test]
fn invalid_configurations_are_refused_with_the_key_named() {
    use rill_raft::{Config, ConfigError, MemStore, Raft};
    let mut cfg = Config::new(1, 0);
    cfg.heartbeat_interval_ticks = 10;
    let err = Raft::new(cfg, MemStore::new(Membership::with_voters([1])))
        .err()
        .expect("refused");
    assert_eq!(
        err,
        ConfigError::ElectionTimeoutNotAboveHeartbeat {
            election: 10,
            heartbeat: 10
        }
    );
    assert!(err.to_string().contains("election_timeout_ticks"));
    let mut cfg = Config::new(1, 0);
    cfg.inflight_bytes_max = 10;
    assert!(matches!(
        cfg.validate(),
        Err(ConfigError::InflightBelowAppend { .. })
    ));
    assert_eq!(Config::new(0, 0).validate(), Err(ConfigError::ZeroNodeId));
}

#[test]
fn a_message_with_the_maximum_term_is_refused() {
    let mut c = three();
    let m = rill_raft::Message {
        from: 2,
        to: 1,
        term: u64::MAX,
        body: MessageBody::Heartbeat {
            commit_offset: 0,
            quiesce: false,
        },
    };
    assert_eq!(
        c.node(1).step(m),
        Err(MessageError::TermOutOfRange { from: 2 })
    );
    assert_eq!(c.node(1).term(), 0);
}

#[test]
fn a_leader_replicates_proposals_made_while_its_ready_is_out_but_counts_them_only_once_durable() {
    let mut c = three();
    elect(&mut c, 1);
    let first = c.propose(1, "a").unwrap();
    let rd = c.node(1).ready();
    assert_eq!(rd.persist.entries.len(), 1);
    // The leader's Ready is out (its fsync runs): a proposal still goes out at once.
    let second = c.propose(1, "bb").unwrap();
    assert_eq!(second.base_offset, first.end_offset);
    let early = c.node(1).take_messages();
    assert!(
        early.iter().any(|m| m.to == 2
            && matches!(&m.body, MessageBody::Append { entries, .. }
                if entries.last().map(|e| e.end_offset) == Some(second.end_offset))),
        "no append of the second proposal among {early:?}"
    );
    // Node 2 gets both appends, persists them and acknowledges the second.
    let mut held_for_3 = Vec::new();
    for m in rd.messages.iter().cloned().chain(early) {
        if m.to == 2 {
            c.mailbox.entry(2).or_default().push(m);
        } else {
            held_for_3.push(m);
        }
    }
    c.deliver(2);
    while c.process_ready(2) {}
    assert_eq!(c.node(2).last_end_offset(), second.end_offset);
    // The leader's Ready held only the first proposal: once durable, the leader's
    // own match is the first proposal's end, so node 2's ack alone (one of three)
    // commits the first proposal but not the second.
    c.node(1).store_mut().apply(&rd.persist);
    let durable = rd.persist.into_durable();
    let _ = rd.after_persist.release(&durable);
    c.node(1).advance(durable);
    c.deliver(1);
    assert_eq!(c.node(1).commit_offset(), first.end_offset);
    // The next Ready persists the second proposal; then it commits.
    assert!(c.node(1).has_ready());
    while c.process_ready(1) {}
    assert_eq!(c.node(1).commit_offset(), second.end_offset);
    c.mailbox.entry(3).or_default().extend(held_for_3);
    c.stabilize();
    assert_eq!(c.node(3).last_end_offset(), second.end_offset);
}
