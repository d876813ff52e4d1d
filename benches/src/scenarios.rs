//! The scenarios and how one is run: brokers started for a case, `rill bench
//! produce|consume` processes for each step, CPU of both sides measured from the
//! kernel (the clients' rusage from `wait4`, the brokers' `/proc/<pid>/stat` over the
//! steps' run), and each client's `--json` outcome read back into a [`Row`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use indicatif::ProgressBar;
use rill_client::{Admin, ClientConfig, NewTopic, ResponseError};
use serde_json::{json, Value};

use crate::brokers::{cpu_seconds_of, start_cluster, LocalBroker};
use crate::peer::Tansu;
use crate::Error;

/// Which brokers a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nodes {
    /// One `rilld`.
    One,
    /// Three `rilld` forming a cluster; topics RF=3.
    Three,
    /// The peer (Tansu, in memory).
    Peer,
}

/// What a row's throughput is compared with in the table's "vs limit" column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Compare {
    /// Nothing.
    None,
    /// Loopback TCP single stream.
    Loopback,
    /// Write + fdatasync every 1 MiB.
    Fdatasync,
    /// Another row (by name) of the same run.
    Row(String),
}

/// A fixed-rate step's rate: `fraction` of the records/s of step `of` measured in the
/// same run of the same case, kept for `seconds`.
#[derive(Debug, Clone)]
pub(crate) struct RateOf {
    pub(crate) of: String,
    pub(crate) fraction: f64,
    pub(crate) seconds: f64,
    /// The producer's linger (`rill bench produce --linger-ms`) in these runs: a
    /// batch may wait this long for more records before it is sent, so it is part
    /// of every record's latency (see [`Sizes::rate_linger_ms`]).
    pub(crate) linger_ms: u64,
    /// Copies of each record the brokers fdatasync to this machine's one disk (1 on a
    /// single node at `durability = fsync`, 3 for RF=3): the rate is also held to
    /// `fraction` of what the disk sustains for that many copies, when that is lower.
    pub(crate) disk_copies: u32,
}

/// Bytes a record takes on disk beyond its value, for the disk's rate cap: by the
/// record layout 9-13 for a 1 KiB value with no key or headers (length, attributes,
/// timestamp and offset deltas, key and value lengths, header count) plus its share of
/// the 61-byte batch header; 16 rounds that up (a higher figure only lowers the cap).
const RECORD_DISK_OVERHEAD_BYTES: f64 = 16.0;

/// `producers` concurrent `rill bench produce` processes.
#[derive(Debug, Clone)]
pub(crate) struct Produce {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) acks: &'static str,
    pub(crate) partitions: i32,
    pub(crate) size_bytes: usize,
    /// Records per producer (a fixed-rate step computes its own).
    pub(crate) count: u64,
    pub(crate) producers: u32,
    pub(crate) rate: Option<RateOf>,
    pub(crate) compare: Compare,
    /// The Rill row a peer row is the counterpart of.
    pub(crate) peer_of: Option<String>,
}

/// One `rill bench consume` of everything step `of` produced.
#[derive(Debug, Clone)]
pub(crate) struct Consume {
    pub(crate) name: String,
    pub(crate) of: String,
    /// Drop the page cache first (`sync`, then `1 > /proc/sys/vm/drop_caches`).
    pub(crate) drop_cache: bool,
    pub(crate) compare: Compare,
    pub(crate) peer_of: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Produce(Produce),
    Consume(Consume),
}

impl Step {
    pub(crate) fn name(&self) -> &str {
        match self {
            Step::Produce(p) => &p.name,
            Step::Consume(c) => &c.name,
        }
    }
}

/// Brokers started once, then steps run in order against them.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) nodes: Nodes,
    /// Headline cases run `--runs` times (interleaved with each other); the rest once.
    pub(crate) headline: bool,
    pub(crate) steps: Vec<Step>,
    /// Flags for this case's brokers, after the suite's `--rilld-arg`s.
    pub(crate) rilld_args: Vec<String>,
}

/// How big the matrix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Quick,
    Default,
    Full,
}

/// Sizes of the matrix's steps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Records of 1 KiB per single-producer acks=1 run (others scale from it).
    pub(crate) count: u64,
    /// Length of each fixed-rate run.
    pub(crate) rate_seconds: f64,
    /// The producer's linger in fixed-rate runs. The client's default (5 ms, as
    /// Kafka's and librdkafka's) holds a record in its batch for up to 5 ms before the
    /// batch is sent, half of a 10 ms latency budget spent by design; the latency runs
    /// default to 1 ms so that their figure is mostly the broker's round trip.
    pub(crate) rate_linger_ms: u64,
}

#[allow(clippy::too_many_arguments)]
fn produce(
    name: &str,
    acks: &'static str,
    partitions: i32,
    size_bytes: usize,
    count: u64,
    producers: u32,
    compare: Compare,
) -> Step {
    Step::Produce(Produce {
        name: name.to_owned(),
        topic: name.to_owned(),
        acks,
        partitions,
        size_bytes,
        count: count.max(1),
        producers,
        rate: None,
        compare,
        peer_of: None,
    })
}

fn rate_half(name: &str, of: &Step, sizes: Sizes, disk_copies: u32) -> Step {
    let Step::Produce(p) = of else {
        unreachable!("a rate step follows a produce step");
    };
    Step::Produce(Produce {
        name: name.to_owned(),
        topic: name.to_owned(),
        producers: 1,
        rate: Some(RateOf {
            of: p.name.clone(),
            fraction: 0.5,
            seconds: sizes.rate_seconds,
            linger_ms: sizes.rate_linger_ms,
            disk_copies,
        }),
        compare: Compare::None,
        peer_of: None,
        ..p.clone()
    })
}

fn consume(name: &str, of: &str, drop_cache: bool, compare: Compare) -> Step {
    Step::Consume(Consume {
        name: name.to_owned(),
        of: of.to_owned(),
        drop_cache,
        compare,
        peer_of: None,
    })
}

/// The matrix of `profile` (before `--scenarios` filters it). `peer`: add the peer's
/// cases.
pub(crate) fn cases(profile: Profile, sizes: Sizes, peer: bool) -> Vec<Case> {
    let n = sizes.count;
    const KIB: usize = 1024;
    let mut cases = Vec::new();

    let acks1 = produce("1n-acks1-1p-1k", "1", 1, KIB, n, 1, Compare::Loopback);
    let acks1_rate = rate_half("1n-acks1-1p-1k-rate50", &acks1, sizes, 1);
    cases.push(Case {
        rilld_args: Vec::new(),
        name: "1n-acks1".to_owned(),
        nodes: Nodes::One,
        headline: true,
        steps: vec![
            acks1,
            acks1_rate,
            consume(
                "1n-consume-cache-1p-1k",
                "1n-acks1-1p-1k",
                false,
                Compare::Loopback,
            ),
            consume(
                "1n-consume-cold-1p-1k",
                "1n-acks1-1p-1k",
                true,
                Compare::Loopback,
            ),
        ],
    });
    // The same at `durability = "interval"` (as a Kafka broker, which never fsyncs:
    // page cache, flushed each second): under the default `fsync` an acks=1 producer
    // runs at most the uncommitted backlog (256 MiB) ahead of fdatasync, so the disk
    // bounds it; here the network and the CPU do.
    cases.push(Case {
        rilld_args: vec!["--durability".to_owned(), "interval".to_owned()],
        name: "1n-acks1-interval".to_owned(),
        nodes: Nodes::One,
        headline: true,
        steps: vec![produce(
            "1n-acks1-interval-1p-1k",
            "1",
            1,
            KIB,
            n,
            1,
            Compare::Loopback,
        )],
    });
    let acks_all = produce(
        "1n-acksall-1p-1k",
        "all",
        1,
        KIB,
        n / 2,
        1,
        Compare::Fdatasync,
    );
    cases.push(Case {
        rilld_args: Vec::new(),
        name: "1n-acksall".to_owned(),
        nodes: Nodes::One,
        headline: true,
        steps: vec![
            acks_all.clone(),
            rate_half("1n-acksall-1p-1k-rate50", &acks_all, sizes, 1),
        ],
    });
    let rf3 = produce(
        "3n-rf3-acksall-1p-1k",
        "all",
        1,
        KIB,
        n / 2,
        1,
        Compare::Row("1n-acks1-1p-1k".to_owned()),
    );
    cases.push(Case {
        rilld_args: Vec::new(),
        name: "3n-rf3".to_owned(),
        nodes: Nodes::Three,
        headline: true,
        steps: vec![
            rf3.clone(),
            rate_half("3n-rf3-acksall-1p-1k-rate50", &rf3, sizes, 3),
        ],
    });
    if peer {
        let mut p = produce("peer-acks1-1p-1k", "1", 1, KIB, n, 1, Compare::Loopback);
        if let Step::Produce(p) = &mut p {
            p.peer_of = Some("1n-acks1-1p-1k".to_owned());
        }
        let mut c = consume(
            "peer-consume-1p-1k",
            "peer-acks1-1p-1k",
            false,
            Compare::Loopback,
        );
        if let Step::Consume(c) = &mut c {
            c.peer_of = Some("1n-consume-cache-1p-1k".to_owned());
        }
        cases.push(Case {
            rilld_args: Vec::new(),
            name: "peer".to_owned(),
            nodes: Nodes::Peer,
            headline: true,
            steps: vec![p, c],
        });
    }
    let single = |name: &str, step: Step| Case {
        rilld_args: Vec::new(),
        name: name.to_owned(),
        nodes: Nodes::One,
        headline: false,
        steps: vec![step],
    };
    cases.push(single(
        "1n-acks1-8p",
        produce("1n-acks1-8p-1k", "1", 8, KIB, n, 1, Compare::Loopback),
    ));
    cases.push(single(
        "1n-acks1-64p",
        produce("1n-acks1-64p-1k", "1", 64, KIB, n, 1, Compare::Loopback),
    ));
    cases.push(single(
        "1n-acks1-100b",
        produce("1n-acks1-1p-100b", "1", 1, 100, n * 2, 1, Compare::Loopback),
    ));
    cases.push(single(
        "1n-acks1-4prod",
        produce(
            "1n-acks1-8p-1k-4prod",
            "1",
            8,
            KIB,
            n / 4,
            4,
            Compare::Loopback,
        ),
    ));
    if profile == Profile::Full {
        cases.push(single(
            "1n-acksall-8p-4prod",
            produce(
                "1n-acksall-8p-1k-4prod",
                "all",
                8,
                KIB,
                n / 8,
                4,
                Compare::Fdatasync,
            ),
        ));
        cases.push(single(
            "1n-acksall-64p",
            produce(
                "1n-acksall-64p-1k",
                "all",
                64,
                KIB,
                n / 2,
                1,
                Compare::Fdatasync,
            ),
        ));
        cases.push(single(
            "1n-acks1-100b-4prod",
            produce(
                "1n-acks1-8p-100b-4prod",
                "1",
                8,
                100,
                n / 2,
                4,
                Compare::Loopback,
            ),
        ));
        cases.push(single(
            "1n-acksall-100b",
            produce(
                "1n-acksall-1p-100b",
                "all",
                1,
                100,
                n,
                1,
                Compare::Fdatasync,
            ),
        ));
        cases.push(Case {
            rilld_args: Vec::new(),
            name: "3n-rf3-8p".to_owned(),
            nodes: Nodes::Three,
            headline: false,
            steps: vec![produce(
                "3n-rf3-acksall-8p-1k-4prod",
                "all",
                8,
                KIB,
                n / 8,
                4,
                Compare::Row("1n-acks1-8p-1k-4prod".to_owned()),
            )],
        });
    }
    cases
}

/// Keeps the cases any of whose names (case or step) contains one of the
/// comma-separated `filter` words.
pub(crate) fn filter(cases: Vec<Case>, filter: Option<&str>) -> Vec<Case> {
    let Some(filter) = filter else {
        return cases;
    };
    let words: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    cases
        .into_iter()
        .filter(|c| {
            words
                .iter()
                .any(|w| c.name.contains(w) || c.steps.iter().any(|s| s.name().contains(w)))
        })
        .collect()
}

/// Latency quantiles in µs: p50, p90, p99, p99.9, max.
pub(crate) type Quantiles = [f64; 5];

/// One timeline interval of a row: start (ms from the client's start), records,
/// bytes, p50 and p99 latency (µs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Interval {
    pub(crate) start_ms: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
}

/// What a step measured in one run.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) case: String,
    pub(crate) run: usize,
    /// `None` when measured; why not otherwise ("skipped: ...", "failed: ...").
    pub(crate) not_measured: Option<String>,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) mb_per_s: f64,
    pub(crate) records_per_s: f64,
    pub(crate) latency_us: Quantiles,
    /// Produce request round trips, when the client reports them.
    pub(crate) request_latency_us: Option<Quantiles>,
    /// acks=all fixed-rate steps: the disk-alone latency floor at the same rate
    /// ([`crate::commit_floor`]), measured right after the step on the brokers' disk.
    pub(crate) commit_floor_us: Option<Quantiles>,
    pub(crate) broker_cpu_s: f64,
    pub(crate) client_cpu_s: f64,
    /// Target rate of a fixed-rate step, records/s.
    pub(crate) rate_per_s: Option<f64>,
    /// Whether that rate was held to the disk's sustained rate (lower than the
    /// fraction of the full-speed run's).
    pub(crate) rate_disk_bound: bool,
    pub(crate) timeline: Vec<Interval>,
    pub(crate) compare: Compare,
    pub(crate) peer_of: Option<String>,
}

impl Row {
    pub(crate) fn new(
        case: &str,
        run: usize,
        name: &str,
        compare: Compare,
        peer_of: Option<String>,
    ) -> Row {
        Row {
            name: name.to_owned(),
            case: case.to_owned(),
            run,
            not_measured: None,
            records: 0,
            bytes: 0,
            elapsed_s: 0.0,
            mb_per_s: 0.0,
            records_per_s: 0.0,
            latency_us: [0.0; 5],
            request_latency_us: None,
            commit_floor_us: None,
            broker_cpu_s: 0.0,
            client_cpu_s: 0.0,
            rate_per_s: None,
            rate_disk_bound: false,
            timeline: Vec::new(),
            compare,
            peer_of,
        }
    }

    fn gb(&self) -> f64 {
        (self.bytes as f64 / 1e9).max(1e-12)
    }

    /// Broker CPU-seconds per GB moved.
    pub(crate) fn broker_cpu_s_per_gb(&self) -> f64 {
        self.broker_cpu_s / self.gb()
    }

    /// Records/s over the second half of the run (from its timeline), or over the
    /// whole run if that is lower or there is no timeline. A full-speed run starts with
    /// the disk's burst (this VM's disk takes ~1 GB/s of fdatasynced writes for its
    /// first ~1.5 GB, then ~430 MB/s) and, at acks=1, with 256 MiB of appends the broker
    /// may hold unsynced: the second half is the rate the system sustains, which is the
    /// maximum a fixed-rate run's fraction is taken of.
    pub(crate) fn sustained_records_per_s(&self) -> f64 {
        let end_ms = self.elapsed_s * 1000.0;
        let half_ms = end_ms / 2.0;
        let late = self
            .timeline
            .iter()
            .filter(|i| i.start_ms as f64 >= half_ms);
        let Some(from_ms) = late.clone().map(|i| i.start_ms as f64).reduce(f64::min) else {
            return self.records_per_s;
        };
        let records: u64 = late.map(|i| i.records).sum();
        if end_ms - from_ms < 200.0 {
            return self.records_per_s;
        }
        (records as f64 / ((end_ms - from_ms) / 1000.0)).min(self.records_per_s)
    }

    /// Client CPU-seconds per GB moved.
    pub(crate) fn client_cpu_s_per_gb(&self) -> f64 {
        self.client_cpu_s / self.gb()
    }

    pub(crate) fn to_json(&self) -> Value {
        let q = |q: &Quantiles| json!({"p50": q[0], "p90": q[1], "p99": q[2], "p99_9": q[3], "max": q[4]});
        json!({
            "name": self.name,
            "case": self.case,
            "run": self.run,
            "not_measured": self.not_measured,
            "records": self.records,
            "bytes": self.bytes,
            "elapsed_s": self.elapsed_s,
            "mb_per_s": self.mb_per_s,
            "records_per_s": self.records_per_s,
            "latency_us": q(&self.latency_us),
            "request_latency_us": self.request_latency_us.as_ref().map(q),
            "commit_floor_us": self.commit_floor_us.as_ref().map(q),
            "broker_cpu_s": self.broker_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "broker_cpu_s_per_gb": self.broker_cpu_s_per_gb(),
            "client_cpu_s_per_gb": self.client_cpu_s_per_gb(),
            "rate_per_s": self.rate_per_s,
            "rate_disk_bound": self.rate_disk_bound,
            "timeline": self.timeline.iter().map(|i| json!({
                "start_ms": i.start_ms, "records": i.records, "bytes": i.bytes,
                "p50_us": i.p50_us, "p99_us": i.p99_us,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What running a case needs.
pub(crate) struct Runner {
    pub(crate) rill: PathBuf,
    pub(crate) rilld: PathBuf,
    pub(crate) tansu: Option<PathBuf>,
    /// Parent of each case's broker data.
    pub(crate) data_dir: PathBuf,
    /// Where client JSON and logs go.
    pub(crate) results_dir: PathBuf,
    pub(crate) rilld_args: Vec<String>,
    /// Whether steps may drop the page cache (`--no-drop-cache` skips them).
    pub(crate) drop_cache: bool,
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) bar: ProgressBar,
    /// No per-step lines.
    pub(crate) quiet: bool,
    /// The disk's sustained write+fdatasync MB/s (machine limits), which caps the
    /// fixed-rate steps of disk-bound cases.
    pub(crate) disk_sustained_mb_s: Option<f64>,
}

/// The brokers of a running case.
enum Running {
    Rill(Vec<LocalBroker>),
    Peer(Tansu),
}

impl Running {
    fn bootstrap(&self) -> String {
        match self {
            Running::Rill(brokers) => brokers
                .iter()
                .map(|b| b.client_addr.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Running::Peer(t) => t.client_addr.to_string(),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Running::Rill(brokers) => brokers.iter().filter_map(LocalBroker::cpu_seconds).sum(),
            Running::Peer(t) => cpu_seconds_of(&t.pid().to_string()).unwrap_or(f64::NAN),
        }
    }
}

/// Waits for `child` with wait4(2): its exit success and the CPU seconds (user +
/// system) it used.
fn wait_with_cpu(child: Child) -> Result<(bool, f64), Error> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| Error::Config("child pid out of range".to_owned()))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes only into `status` and `usage`, valid locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Config(format!("wait for client {pid}: {e}")));
        }
    }
    crate::cleanup::unregister_pid(child.id());
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

fn quantiles(v: &Value) -> Option<Quantiles> {
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    Some([f("p50")?, f("p90")?, f("p99")?, f("p99_9")?, f("max")?])
}

/// Drops the page cache: `sync`, then `1` into `/proc/sys/vm/drop_caches` (root only).
fn drop_page_cache() -> Result<(), String> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "1")
        .map_err(|e| format!("cannot drop the page cache ({e}); needs root"))
}

impl Runner {
    /// Runs `case` (its `run`-th time): starts its brokers, runs its steps, stops
    /// them and removes their data. A step that fails gives a row that says so.
    pub(crate) fn run_case(&self, case: &Case, run: usize) -> Result<Vec<Row>, Error> {
        let dir = self.data_dir.join(format!("{}-run{run}", case.name));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Config(format!("create {}: {e}", dir.display())))?;
        let running = match case.nodes {
            Nodes::One => Running::Rill(vec![LocalBroker::start(
                &self.rilld,
                &dir,
                1,
                &[self.rilld_args.as_slice(), case.rilld_args.as_slice()].concat(),
            )?]),
            Nodes::Three => {
                let brokers = start_cluster(
                    &self.rilld,
                    &dir,
                    3,
                    &[self.rilld_args.as_slice(), case.rilld_args.as_slice()].concat(),
                )?;
                let running = Running::Rill(brokers);
                self.runtime
                    .block_on(wait_registered(&running.bootstrap(), 3))?;
                running
            }
            Nodes::Peer => {
                let Some(tansu) = &self.tansu else {
                    return Ok(Vec::new());
                };
                Running::Peer(Tansu::start(tansu, &dir.join("tansu.log"))?)
            }
        };
        let mut rows: Vec<Row> = Vec::new();
        for step in &case.steps {
            self.bar.set_message(format!("{} (run {run})", step.name()));
            let row = match step {
                Step::Produce(p) => self.produce(case, run, p, &running, &rows),
                Step::Consume(c) => self.consume(case, run, c, &running, &rows),
            };
            self.bar.inc(1);
            if !self.quiet {
                // A hidden bar (not a terminal) prints nothing: the lines go to stdout.
                if self.bar.is_hidden() {
                    println!("{}", crate::report::one_line(&row));
                } else {
                    self.bar.println(crate::report::one_line(&row));
                }
            }
            rows.push(row);
        }
        drop(running);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(rows)
    }

    fn replication_factor(nodes: Nodes) -> i16 {
        match nodes {
            Nodes::Three => 3,
            Nodes::One | Nodes::Peer => -1,
        }
    }

    fn produce(
        &self,
        case: &Case,
        run: usize,
        p: &Produce,
        running: &Running,
        rows: &[Row],
    ) -> Row {
        let mut row = Row::new(
            &case.name,
            run,
            &p.name,
            p.compare.clone(),
            p.peer_of.clone(),
        );
        let mut count = p.count;
        if let Some(rate) = &p.rate {
            let Some(of) = rows
                .iter()
                .find(|r| r.name == rate.of && r.not_measured.is_none())
            else {
                row.not_measured = Some(format!("skipped: needs {}", rate.of));
                return row;
            };
            let run_per_s = of.sustained_records_per_s();
            let disk_per_s = self.disk_sustained_mb_s.map(|mb_s| {
                mb_s * 1e6
                    / f64::from(rate.disk_copies.max(1))
                    / (p.size_bytes as f64 + RECORD_DISK_OVERHEAD_BYTES)
            });
            let max_per_s = match disk_per_s {
                Some(disk) if rate.disk_copies > 0 && disk < run_per_s => {
                    row.rate_disk_bound = true;
                    disk
                }
                _ => run_per_s,
            };
            let per_s = (max_per_s * rate.fraction).max(1.0);
            row.rate_per_s = Some(per_s);
            count = ((per_s * rate.seconds) as u64).max(100);
        }
        let bootstrap = running.bootstrap();
        let topic = NewTopic {
            replication_factor: Self::replication_factor(case.nodes),
            ..NewTopic::new(p.topic.clone(), p.partitions)
        };
        if let Err(e) = self.runtime.block_on(create_topic(&bootstrap, topic)) {
            row.not_measured = Some(format!("failed: create topic: {e}"));
            return row;
        }
        let mut commands = Vec::new();
        for i in 0..p.producers {
            let json = self
                .results_dir
                .join(format!("{}-run{run}-p{i}.json", p.name));
            let mut cmd = Command::new(&self.rill);
            cmd.arg("-b")
                .arg(&bootstrap)
                .args(["bench", "produce", &p.topic, "--quiet"])
                .arg("--size")
                .arg(p.size_bytes.to_string())
                .arg("--count")
                .arg(count.to_string())
                .arg("--partitions")
                .arg(p.partitions.to_string())
                .arg("--acks")
                .arg(p.acks)
                .arg("--json")
                .arg(&json);
            if let (Some(rate), Some(of)) = (row.rate_per_s, &p.rate) {
                cmd.arg("--rate")
                    .arg((rate.round() as u64).max(1).to_string())
                    .arg("--linger-ms")
                    .arg(of.linger_ms.to_string());
            }
            commands.push((cmd, json));
        }
        self.run_clients(&mut row, running, commands);
        if let (Some(rate), Some(of), "all", Running::Rill(brokers)) =
            (row.rate_per_s, &p.rate, p.acks, running)
        {
            if row.not_measured.is_none() {
                self.bar
                    .set_message(format!("{} (run {run}): commit floor", p.name));
                // Every replica's file on the brokers' disk; a majority must sync.
                let replicas = brokers.len();
                let floor = crate::commit_floor::measure(
                    &self.data_dir,
                    crate::commit_floor::Workload {
                        records_per_s: rate,
                        record_bytes: p.size_bytes,
                        linger: Duration::from_millis(of.linger_ms),
                        duration: Duration::from_secs_f64(of.seconds),
                        replicas,
                        quorum: replicas / 2 + 1,
                    },
                );
                match floor {
                    Ok(q) => row.commit_floor_us = Some(q),
                    Err(e) => eprintln!("{}: commit floor not measured: {e}", p.name),
                }
            }
        }
        row
    }

    fn consume(
        &self,
        case: &Case,
        run: usize,
        c: &Consume,
        running: &Running,
        rows: &[Row],
    ) -> Row {
        let mut row = Row::new(
            &case.name,
            run,
            &c.name,
            c.compare.clone(),
            c.peer_of.clone(),
        );
        let Some(of) = rows
            .iter()
            .find(|r| r.name == c.of && r.not_measured.is_none())
        else {
            row.not_measured = Some(format!("skipped: needs {}", c.of));
            return row;
        };
        let Some(Step::Produce(p)) = case.steps.iter().find(|s| s.name() == c.of) else {
            row.not_measured = Some(format!("skipped: no step {}", c.of));
            return row;
        };
        if c.drop_cache && !self.drop_cache {
            row.not_measured = Some("skipped: --no-drop-cache".to_owned());
            return row;
        }
        if c.drop_cache {
            if let Err(e) = drop_page_cache() {
                row.not_measured = Some(format!("skipped: {e}"));
                return row;
            }
        }
        let json = self.results_dir.join(format!("{}-run{run}.json", c.name));
        let mut cmd = Command::new(&self.rill);
        cmd.arg("-b")
            .arg(running.bootstrap())
            .args(["bench", "consume", &p.topic, "--quiet"])
            .arg("--count")
            .arg(of.records.to_string())
            .arg("--size")
            .arg(p.size_bytes.to_string())
            .arg("--json")
            .arg(&json);
        self.run_clients(&mut row, running, vec![(cmd, json)]);
        row
    }

    /// Starts every command at once (output to a log beside its JSON), waits for all,
    /// and fills `row` from their JSON, their rusage and the brokers' CPU meanwhile.
    fn run_clients(&self, row: &mut Row, running: &Running, commands: Vec<(Command, PathBuf)>) {
        let broker_cpu_before = running.cpu_seconds();
        let mut children = Vec::new();
        for (mut cmd, json) in commands {
            let log = json.with_extension("log");
            let out = match std::fs::File::create(&log).and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((out, err)) => (out, err),
                Err(e) => {
                    row.not_measured = Some(format!("failed: create {}: {e}", log.display()));
                    break;
                }
            };
            match cmd.stdin(Stdio::null()).stdout(out.0).stderr(out.1).spawn() {
                Ok(child) => {
                    crate::cleanup::register_pid(child.id());
                    children.push((child, json, log));
                }
                Err(e) => {
                    row.not_measured = Some(format!("failed: start {}: {e}", self.rill.display()));
                    break;
                }
            }
        }
        let mut outcomes = Vec::new();
        for (child, json, log) in children {
            match wait_with_cpu(child) {
                Ok((true, cpu)) => {
                    row.client_cpu_s += cpu;
                    outcomes.push(json);
                }
                Ok((false, _)) => {
                    row.not_measured =
                        Some(format!("failed: client failed; see {}", log.display()));
                }
                Err(e) => row.not_measured = Some(format!("failed: {e}")),
            }
        }
        row.broker_cpu_s = running.cpu_seconds() - broker_cpu_before;
        if row.not_measured.is_some() {
            return;
        }
        if let Err(e) = fill_from_json(row, &outcomes) {
            row.not_measured = Some(format!("failed: {e}"));
        }
    }
}

/// Sums the clients' outcomes into `row`: records and bytes add up, elapsed is the
/// longest client's, each latency quantile the worst client's (quantiles do not
/// merge; with one client they are exact), timelines add up interval by interval.
fn fill_from_json(row: &mut Row, outcomes: &[PathBuf]) -> Result<(), String> {
    let mut timeline: BTreeMap<u64, Interval> = BTreeMap::new();
    for path in outcomes {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        row.records += u("records");
        row.bytes += u("bytes");
        row.elapsed_s = row
            .elapsed_s
            .max(v.get("elapsed_s").and_then(Value::as_f64).unwrap_or(0.0));
        let latency = v
            .get("latency_us")
            .and_then(quantiles)
            .ok_or("no latency_us")?;
        for (mine, theirs) in row.latency_us.iter_mut().zip(latency) {
            *mine = mine.max(theirs);
        }
        if let Some(request) = v.get("request_latency_us").and_then(quantiles) {
            let mine = row.request_latency_us.get_or_insert([0.0; 5]);
            for (m, t) in mine.iter_mut().zip(request) {
                *m = m.max(t);
            }
        }
        let intervals = v
            .get("timeline")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for interval in &intervals {
            let g = |k: &str| interval.get(k).and_then(Value::as_u64).unwrap_or(0);
            // Clients started together: their intervals line up by start time.
            let x = timeline.entry(g("start_ms")).or_default();
            x.start_ms = g("start_ms");
            x.records += g("records");
            x.bytes += g("bytes");
            x.p50_us = x.p50_us.max(g("p50_us"));
            x.p99_us = x.p99_us.max(g("p99_us"));
        }
    }
    row.timeline = timeline.into_values().collect();
    let secs = row.elapsed_s.max(1e-9);
    row.mb_per_s = row.bytes as f64 / secs / 1e6;
    row.records_per_s = row.records as f64 / secs;
    if row.records == 0 {
        return Err("no records".to_owned());
    }
    Ok(())
}

/// Creates `topic` (an existing one is fine).
async fn create_topic(bootstrap: &str, topic: NewTopic) -> Result<(), rill_client::Error> {
    let admin = Admin::new(ClientConfig::new(bootstrap))?;
    match admin.create_topics(&[topic]).await {
        Ok(())
        | Err(rill_client::Error::Broker {
            code: ResponseError::TopicAlreadyExists,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits until the cluster lists `count` brokers and a controller.
pub(crate) async fn wait_registered(bootstrap: &str, count: usize) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let admin = Admin::new(ClientConfig::new(bootstrap))?;
        match admin.describe_cluster().await {
            Ok(d) if d.brokers.len() == count && d.controller_id >= 0 => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(Error::Config(format!(
                    "the cluster did not register {count} brokers within 60 s"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_with(timeline: &[(u64, u64)], elapsed_s: f64) -> Row {
        let mut row = Row::new("c", 1, "r", Compare::None, None);
        row.elapsed_s = elapsed_s;
        row.records = timeline.iter().map(|&(_, n)| n).sum();
        row.records_per_s = row.records as f64 / elapsed_s;
        row.timeline = timeline
            .iter()
            .map(|&(start_ms, records)| Interval {
                start_ms,
                records,
                bytes: records * 1024,
                p50_us: 1,
                p99_us: 1,
            })
            .collect();
        row
    }

    /// A run that starts fast (a disk's burst) is held to the rate of its second half;
    /// a steady run, and one without a timeline, to its average.
    #[test]
    fn the_sustained_rate_is_the_second_half_s_unless_the_average_is_lower() {
        // 1 s at 100 records per 100 ms, then 1 s at 40.
        let bursty: Vec<(u64, u64)> = (0..20)
            .map(|i| (i * 100, if i < 10 { 100 } else { 40 }))
            .collect();
        let row = row_with(&bursty, 2.0);
        assert!((row.records_per_s - 700.0).abs() < 1e-6);
        assert!((row.sustained_records_per_s() - 400.0).abs() < 1e-6);
        // Faster at the end: the average holds.
        let rising: Vec<(u64, u64)> = (0..20)
            .map(|i| (i * 100, if i < 10 { 40 } else { 100 }))
            .collect();
        let row = row_with(&rising, 2.0);
        assert!((row.sustained_records_per_s() - 700.0).abs() < 1e-6);
        let mut row = row_with(&bursty, 2.0);
        row.timeline.clear();
        assert!((row.sustained_records_per_s() - 700.0).abs() < 1e-6);
    }
}
