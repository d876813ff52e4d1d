//! Consumer groups with the Python clients kafka-python and aiokafka against a real
//! `rilld`: groups of two and three members (each a Python process) split a 4-partition
//! topic, read every record once between them, commit and close; then a new member of the
//! same group resumes exactly after the committed offsets. The records are produced by the
//! same client library, so its Produce path is exercised too (kafka-python's default
//! producer is idempotent: its batches must carry a producer id).
//!
//! The clients live in a virtual environment that `scripts/test` installs (pinned in
//! `tests/python/requirements.txt`) and names in `RILL_TEST_PYTHON`; the scripts the test
//! runs are `tests/python/*_client.py`.

mod groups_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groups_common::{create_topic, BROKER_ARGS, PARTITIONS};
use rill_tests::RilldProcess;

/// How long any one step may take (generous: Python clients start slowly on a busy
/// machine).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The Python client library a test drives.
#[derive(Debug, Clone, Copy)]
enum Library {
    KafkaPython,
    Aiokafka,
}

impl Library {
    fn script(self) -> PathBuf {
        let name = match self {
            Library::KafkaPython => "kafka_python_client.py",
            Library::Aiokafka => "aiokafka_client.py",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(name)
    }

    fn command(self) -> Command {
        let mut command = Command::new(python());
        command.arg(self.script());
        command
    }
}

/// The virtual environment's python that `scripts/test` set up. Without it the test fails
/// rather than passing without having run anything.
fn python() -> PathBuf {
    match std::env::var_os("RILL_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "RILL_TEST_PYTHON is not set: run the tests through scripts/test, which installs \
             kafka-python and aiokafka (tests/python/requirements.txt) into a virtual \
             environment under the target directory and sets RILL_TEST_PYTHON to its python"
        ),
    }
}

/// Produces `count` records `prefix-i` round-robin over the partitions with `library`'s
/// producer (acks=all); returns the values.
fn produce(
    library: Library,
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let mut command = library.command();
    command.args([
        "produce",
        bootstrap,
        topic,
        &PARTITIONS.to_string(),
        prefix,
        &count.to_string(),
    ]);
    let output = rill_tests::run_piped(command, None, "the Python producer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("PRODUCED {count}")),
        "{library:?} producer failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// What a member process has reported on its stdout.
#[derive(Debug, Default)]
struct Reported {
    /// Its current assignment (partitions), once it has reported one.
    assigned: Option<Vec<i32>>,
    /// (partition, offset, value) of every record it read.
    records: Vec<(i32, i64, String)>,
    committed: bool,
    closed: bool,
    /// Its stdout ended (the process exited).
    ended: bool,
}

/// One group member: a Python process and what it has reported.
struct PyMember {
    child: Child,
    stdin: Option<ChildStdin>,
    reported: Arc<Mutex<Reported>>,
}

impl PyMember {
    fn spawn(library: Library, bootstrap: &str, group: &str, topic: &str) -> PyMember {
        let mut child = library
            .command()
            .args(["consume", bootstrap, group, topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python().display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let reported = Arc::new(Mutex::new(Reported::default()));
        let sink = Arc::clone(&reported);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut r = sink.lock().unwrap();
                if let Some(list) = line.strip_prefix("ASSIGNED") {
                    let partitions = list
                        .split(',')
                        .filter_map(|p| p.trim().parse().ok())
                        .collect();
                    r.assigned = Some(partitions);
                } else if let Some(record) = line.strip_prefix("RECORD ") {
                    let mut fields = record.splitn(3, ' ');
                    let partition = fields.next().and_then(|p| p.parse().ok());
                    let offset = fields.next().and_then(|o| o.parse().ok());
                    let value = fields.next();
                    match (partition, offset, value) {
                        (Some(p), Some(o), Some(v)) => r.records.push((p, o, v.to_string())),
                        _ => panic!("bad line from a member: {line}"),
                    }
                } else if line == "COMMITTED" {
                    r.committed = true;
                } else if line == "CLOSED" {
                    r.closed = true;
                }
            }
            sink.lock().unwrap().ended = true;
        });
        PyMember {
            child,
            stdin,
            reported,
        }
    }

    fn tell(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("member stdin");
        writeln!(stdin, "{command}").expect("write to member");
        stdin.flush().expect("flush member stdin");
    }

    fn partitions(&self) -> usize {
        self.reported
            .lock()
            .unwrap()
            .assigned
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// Commits, then waits for the commit's answer.
    fn commit(&mut self) {
        self.tell("commit");
        let reported = Arc::clone(&self.reported);
        wait_until("a member's commit", || {
            let r = reported.lock().unwrap();
            assert!(!r.ended, "the member exited before it committed");
            r.committed
        });
    }

    /// Leaves the group and waits for the process to exit.
    fn close(mut self) -> Vec<(i32, i64, String)> {
        self.tell("close");
        let reported = Arc::clone(&self.reported);
        wait_until("a member to close", || reported.lock().unwrap().ended);
        let status = self.child.wait().expect("wait for member");
        let r = self.reported.lock().unwrap();
        assert!(status.success() && r.closed, "member exited with {status}");
        r.records.clone()
    }
}

impl Drop for PyMember {
    /// A member still running when the test ends early (a failed assertion) is killed, so
    /// no Python process outlives the test.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn records_read(members: &[PyMember]) -> usize {
    members
        .iter()
        .map(|m| m.reported.lock().unwrap().records.len())
        .sum()
}

/// `members` Python consumers split the partitions, read every record once between them,
/// commit and leave; then a new member resumes exactly after the committed offsets.
fn members_split_commit_and_a_new_member_resumes(
    library: Library,
    bootstrap: &str,
    topic: &str,
    members: usize,
) {
    let group = format!("{topic}-group");
    let started = Instant::now();
    let mut team: Vec<PyMember> = (0..members)
        .map(|_| PyMember::spawn(library, bootstrap, &group, topic))
        .collect();
    // Formed when every member holds partitions and together they hold all of them.
    wait_until("the group to split the partitions", || {
        let counts: Vec<usize> = team.iter().map(PyMember::partitions).collect();
        counts.iter().all(|&c| c > 0) && counts.iter().sum::<usize>() == PARTITIONS as usize
    });
    let split: Vec<Vec<i32>> = team
        .iter()
        .map(|m| {
            m.reported
                .lock()
                .unwrap()
                .assigned
                .clone()
                .unwrap_or_default()
        })
        .collect();
    println!(
        "{library:?}: {members} members split {PARTITIONS} partitions as {split:?}, {:?} after \
         the processes started",
        started.elapsed()
    );
    let every: BTreeSet<i32> = split.iter().flatten().copied().collect();
    assert_eq!(
        every.len(),
        PARTITIONS as usize,
        "a partition assigned twice: {split:?}"
    );

    let first = produce(library, bootstrap, topic, &format!("{topic}-first"), 200);
    wait_until("every record to be read", || {
        records_read(&team) >= first.len()
    });
    for m in &mut team {
        m.commit();
    }
    let mut read = Vec::new();
    for m in team {
        read.extend(m.close());
    }
    check_read_once(&read, &first, "the group");

    // A new member of the group starts after the committed offsets.
    let second = produce(library, bootstrap, topic, &format!("{topic}-second"), 80);
    let member = PyMember::spawn(library, bootstrap, &group, topic);
    wait_until("the new member to read the new records", || {
        member.reported.lock().unwrap().records.len() >= second.len()
    });
    // Anything committed but read again would arrive right behind; give it a moment to show.
    std::thread::sleep(Duration::from_millis(500));
    let read = member.close();
    check_read_once(
        &read,
        &second,
        "the new member (after the committed offsets)",
    );
    println!(
        "{library:?}: group of {members} done in {:?}",
        started.elapsed()
    );
}

/// Checks that `read` holds each of `expected` exactly once and nothing else; the failure
/// names a few of the records read twice, missed and unexpected (a re-read from before the
/// committed offsets shows as unexpected).
fn check_read_once(read: &[(i32, i64, String)], expected: &[String], who: &str) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, value) in read {
        *counts.entry(value.as_str()).or_default() += 1;
    }
    let twice: Vec<&str> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(v, _)| *v)
        .collect();
    let missed: Vec<&String> = expected
        .iter()
        .filter(|v| !counts.contains_key(v.as_str()))
        .collect();
    let wanted: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let unexpected: Vec<&str> = counts
        .keys()
        .filter(|v| !wanted.contains(*v))
        .copied()
        .collect();
    assert!(
        twice.is_empty() && missed.is_empty() && unexpected.is_empty(),
        "{who} read {} records for {} expected: {} read twice (e.g. {:?}), {} missed (e.g. \
         {:?}), {} unexpected (e.g. {:?})",
        read.len(),
        expected.len(),
        twice.len(),
        &twice[..twice.len().min(3)],
        missed.len(),
        &missed[..missed.len().min(3)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(3)],
    );
}

async fn groups_of_two_and_three(library: Library) {
    // Checked before the broker starts, so a missing venv fails at once with its message.
    let _ = python();
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    for members in [2, 3] {
        let topic = format!("{}-split{members}", format!("{library:?}").to_lowercase());
        create_topic(&bootstrap, &topic).await;
        members_split_commit_and_a_new_member_resumes(library, &bootstrap, &topic, members);
        if matches!(library, Library::KafkaPython) {
            // kafka-python's default producer is idempotent: its batches carry the
            // producer id InitProducerId gave it.
            let mut conn = rill_tests::raw::RawConn::connect(broker.addr());
            let ids = rill_tests::raw::batch_producer_ids(&mut conn, &topic, 0);
            assert!(
                !ids.is_empty() && ids.iter().all(|id| *id >= 0),
                "kafka-python's default producer wrote non-idempotent batches: producer ids {ids:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_groups_of_two_and_three_split_partitions_commit_and_resume() {
    groups_of_two_and_three(Library::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiokafka_groups_of_two_and_three_split_partitions_commit_and_resume() {
    groups_of_two_and_three(Library::Aiokafka).await;
}
