//! Golden interaction tests in the style of etcd raft's `testdata/*.txt`:
//! each file is a script of commands, each followed by `----` and the
//! expected trace. `RILL_REWRITE_GOLDEN=1 cargo test -p rill-raft --test
//! interaction` rewrites the expectations from the actual output (review the
//! diff before committing it).
//!
//! Commands:
//!
//! | command | effect |
//! |---|---|
//! | `add-nodes N voters=(1 2 3) [learners=(4)] [pre-vote=false] [check-quorum=false] [append-bytes-max=B] [quiesce=true]` | nodes 1..=N, all knowing that membership |
//! | `campaign ID` | the node starts an election now |
//! | `tick-election ID` / `tick-heartbeat ID` | tick past the longest election timeout / one heartbeat interval |
//! | `process-ready [ID…]` | handle one Ready per node (persist, send, advance) |
//! | `deliver-msgs [ID…] [drop]` | step the queued messages into the nodes (or drop them) |
//! | `stabilize` | process readies and deliver until nothing moves |
//! | `propose ID TEXT` | propose an entry (one offset per byte) |
//! | `propose-membership ID add-learner\|promote\|remove NODE` | single-server change |
//! | `transfer-leadership ID TO` | hand leadership over |
//! | `partition A… / B…`, `heal` | cut / restore links between groups |
//! | `crash ID`, `restart ID` | lose non-durable state / come back from the store |
//! | `compact ID` | retention: move the log start to the commit offset |
//! | `unquiesce ID` | the driver lost the node's leader: wake its quiet group (`leader_lost`) |
//! | `status [ID…]`, `log ID` | print role, term, commit, membership / entries |

#[path = "support/cluster.rs"]
mod cluster;

use std::fmt::Write;
use std::path::Path;

use cluster::Cluster;
use rill_raft::{Membership, MembershipChange, NodeId};

fn parse_ids(s: &str) -> Vec<NodeId> {
    s.trim_matches(|c| c == '(' || c == ')')
        .split([' ', ','])
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap_or_else(|_| panic!("bad node id {t:?}")))
        .collect()
}

/// Splits `voters=(1 2 3) pre-vote=false` style arguments, keeping parens together.
fn tokens(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in args.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ' ' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn ids_or_all(c: &Cluster, args: &[String]) -> Vec<NodeId> {
    let ids: Vec<NodeId> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if ids.is_empty() {
        c.nodes.keys().copied().collect()
    } else {
        ids
    }
}

fn status(c: &mut Cluster, id: NodeId) -> String {
    if !c.nodes.contains_key(&id) {
        return format!("{id}: down");
    }
    let r = c.node(id);
    let leader = r.leader().map_or("none".to_string(), |l| l.to_string());
    format!(
        "{id}: {:?} term={} leader={leader} commit={} last=(t{} @{}) start={} {}{}",
        r.role(),
        r.term(),
        r.commit_offset(),
        r.last_term(),
        r.last_end_offset(),
        r.log_start().offset,
        r.membership(),
        if r.is_quiesced() { " quiesced" } else { "" }
    )
}

fn execute(c: &mut Option<Cluster>, line: &str) -> String {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let args = tokens(rest);
    if cmd == "add-nodes" {
        let n: u64 = args[0].parse().expect("node count");
        let mut voters = (1..=n).collect::<Vec<_>>();
        let mut learners = Vec::new();
        let (mut pre_vote, mut check_quorum, mut append_max) = (true, true, None);
        let mut quiesce = false;
        for a in &args[1..] {
            let (k, v) = a.split_once('=').expect("key=value");
            match k {
                "voters" => voters = parse_ids(v),
                "learners" => learners = parse_ids(v),
                "pre-vote" => pre_vote = v == "true",
                "check-quorum" => check_quorum = v == "true",
                "append-bytes-max" => append_max = Some(v.parse::<usize>().expect("bytes")),
                "quiesce" => quiesce = v == "true",
                _ => panic!("unknown add-nodes argument {k}"),
            }
        }
        let membership = Membership {
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
        };
        let ids: Vec<NodeId> = (1..=n).collect();
        *c = Some(Cluster::new(&ids, &membership, |cfg| {
            cfg.pre_vote = pre_vote;
            cfg.check_quorum = check_quorum;
            cfg.quiesce = quiesce;
            if let Some(b) = append_max {
                cfg.append_bytes_max = b;
            }
        }));
        return String::new();
    }
    let c = c.as_mut().expect("add-nodes first");
    let id = |i: usize| -> NodeId { args[i].parse().expect("node id") };
    match cmd {
        "campaign" => c.node(id(0)).campaign(),
        "tick-election" => {
            let t = c.configs[&id(0)].election_timeout_ticks * 2;
            c.tick(id(0), t);
        }
        "tick-heartbeat" => {
            let t = c.configs[&id(0)].heartbeat_interval_ticks;
            c.tick(id(0), t);
        }
        "process-ready" => {
            for n in ids_or_all(c, &args) {
                c.process_ready(n);
            }
        }
        "deliver-msgs" => {
            let drop = args.iter().any(|a| a == "drop");
            for n in ids_or_all(c, &args) {
                if drop {
                    let msgs = std::mem::take(c.mailbox.entry(n).or_default());
                    for m in msgs {
                        writeln!(c.trace, "dropped {m:?}").unwrap();
                    }
                } else {
                    c.deliver(n);
                }
            }
        }
        "stabilize" => c.stabilize(),
        "unquiesce" => c.node(id(0)).unquiesce(true),
        "propose" => {
            let data = args.get(1).map_or("", |s| s.as_str());
            let r = c.propose(id(0), data);
            match r {
                Ok(p) => writeln!(
                    c.trace,
                    "proposed t{}[{}..{})",
                    p.term, p.base_offset, p.end_offset
                ),
                Err(e) => writeln!(c.trace, "error: {e}"),
            }
            .unwrap();
        }
        "propose-membership" => {
            let target: NodeId = args[2].parse().expect("node id");
            let change = match args[1].as_str() {
                "add-learner" => MembershipChange::AddLearner(target),
                "promote" => MembershipChange::PromoteLearner(target),
                "remove" => MembershipChange::Remove(target),
                other => panic!("unknown membership change {other}"),
            };
            match c.node(id(0)).propose_membership_change(change) {
                Ok(p) => writeln!(
                    c.trace,
                    "proposed t{}[{}..{})",
                    p.term, p.base_offset, p.end_offset
                ),
                Err(e) => writeln!(c.trace, "error: {e}"),
            }
            .unwrap();
        }
        "transfer-leadership" => {
            let to = id(1);
            if let Err(e) = c.node(id(0)).transfer_leadership(to) {
                writeln!(c.trace, "error: {e}").unwrap();
            }
        }
        "partition" => {
            let pos = args.iter().position(|a| a == "/").expect("A… / B…");
            let a: Vec<NodeId> = args[..pos].iter().map(|s| s.parse().unwrap()).collect();
            let b: Vec<NodeId> = args[pos + 1..].iter().map(|s| s.parse().unwrap()).collect();
            c.partition(&a, &b);
        }
        "heal" => c.heal(),
        "crash" => c.crash(id(0)),
        "restart" => c.restart(id(0)),
        "compact" => {
            let n = c.node(id(0));
            let commit = n.commit_offset();
            n.store_mut().compact_to(commit);
            writeln!(c.trace, "{} log start now {commit}", id(0)).unwrap();
        }
        "status" => {
            for n in ids_or_all(c, &args) {
                let s = status(c, n);
                writeln!(c.trace, "{s}").unwrap();
            }
        }
        "log" => {
            let n = c.node(id(0));
            let mut entries = Vec::new();
            let start = n.log_start();
            n.read_entries(start.offset, usize::MAX, &mut entries)
                .expect("read");
            let line = format!("start=(t{} @{}) {entries:?}", start.term, start.offset);
            writeln!(c.trace, "{line}").unwrap();
        }
        other => panic!("unknown command {other:?}"),
    }
    c.take_trace()
}

/// Runs one script; returns the rewritten file and the mismatches.
fn run_script(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut mismatches = Vec::new();
    let mut cluster = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let sep = lines.next();
        assert_eq!(
            sep,
            Some("----"),
            "command {line:?} must be followed by ----"
        );
        let mut expected = String::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() {
                break;
            }
            expected.push_str(l);
            expected.push('\n');
            lines.next();
        }
        let mut actual = execute(&mut cluster, line);
        if actual.is_empty() {
            actual = "ok\n".to_string();
        }
        if actual != expected {
            mismatches.push(format!(
                "command: {line}\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
        out.push_str(line);
        out.push_str("\n----\n");
        out.push_str(&actual);
    }
    (out, mismatches)
}

#[test]
fn golden_interaction_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let rewrite = std::env::var("RILL_REWRITE_GOLDEN").is_ok_and(|v| v == "1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("raft/testdata exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the classic scenarios in {dir:?}"
    );
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read script");
        let (rewritten, mismatches) = run_script(&text);
        if rewrite {
            std::fs::write(&path, rewritten).expect("write script");
        } else if !mismatches.is_empty() {
            failures.push(format!("{}:\n{}", path.display(), mismatches.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "golden traces differ (RILL_REWRITE_GOLDEN=1 regenerates):\n{}",
        failures.join("\n")
    );
}
