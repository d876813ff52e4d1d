//! Keeps the suite from rotting: its smallest mode (a few thousand records per
//! scenario, one run, no peer, small machine-limit measurements) against the debug
//! binaries, checked for a table, JSON with positive figures, client timelines and
//! plots.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn smallest_suite_prints_a_table_and_writes_positive_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rill-bench"))
        .args([
            "suite",
            "--quick",
            "--quiet",
            "--no-peer",
            "--no-drop-cache",
        ])
        .args(["--runs", "1", "--count", "4000", "--rate-seconds", "1"])
        .args(["--limits-mib", "16"])
        .arg("--rilld")
        .arg(rill_tests::rilld_bin())
        .arg("--rill")
        .arg(rill_tests::rill_bin())
        .arg("--dir")
        .arg(dir.path())
        .arg("--results-dir")
        .arg(&results)
        .output()
        .expect("run rill-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    println!("suite took {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "rill-bench failed: {}", out.status);
    assert!(
        stdout.contains("scenario") && stdout.contains("MB/s"),
        "no table"
    );
    assert!(stdout.contains("machine limits:"), "no machine limits");
    assert!(stdout.contains("targets (issue 13"), "no targets");
    assert!(stdout.contains("peer: left out"), "no peer line");

    let suite = json(&results.join("suite.json"));
    for key in [
        "buffered_write_mb_s",
        "fdatasync_1mib_write_mb_s",
        "fdatasync_1mib_write_sustained_mb_s",
        "memcpy_mb_s",
        "loopback_tcp_single_stream_mb_s",
        "fetch_loopback_crc_mb_s",
        "produce_loopback_mb_s",
    ] {
        let v = suite["limits"][key].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "limit {key} = {v}");
    }
    // CPU of 16 MiB of writes can round to zero ticks: present and not negative.
    for key in [
        "buffered_write_cpu_s_per_gb",
        "buffered_write_backed_cpu_s_per_gb",
    ] {
        let v = suite["limits"][key].as_f64().unwrap_or(-1.0);
        assert!(v >= 0.0, "limit {key} = {v}");
    }
    let medians = suite["medians"].as_array().expect("medians");
    let names: Vec<&str> = medians.iter().filter_map(|m| m["name"].as_str()).collect();
    for expected in [
        "1n-acks1-1p-1k",
        "1n-acks1-1p-1k-rate50",
        "1n-acks1-interval-1p-1k",
        "1n-consume-cache-1p-1k",
        "1n-acksall-1p-1k",
        "3n-rf3-acksall-1p-1k",
        "1n-acks1-64p-1k",
        "1n-acks1-1p-100b",
        "1n-acks1-8p-1k-4prod",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for m in medians {
        let name = m["name"].as_str().unwrap_or("?");
        if name == "1n-consume-cold-1p-1k" {
            let why = m["not_measured"].as_str().unwrap_or("");
            assert!(why.starts_with("skipped"), "{name}: {why}");
            continue;
        }
        assert!(m["not_measured"].is_null(), "{name}: {}", m["not_measured"]);
        for key in ["mb_per_s", "records_per_s", "client_cpu_s_per_gb"] {
            let v = m[key].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{name}: {key} = {v}");
        }
        assert!(
            m["broker_cpu_s_per_gb"].as_f64().unwrap_or(-1.0) >= 0.0,
            "{name}"
        );
        let p99 = m["latency_us"]["p99"].as_f64().unwrap_or(0.0);
        assert!(p99 > 0.0, "{name}: p99 {p99}");
    }
    // A fixed-rate step ran at half the maximum measured before it (a run this short
    // has no second half to speak of), or lower where the disk's sustained rate was.
    let step = medians
        .iter()
        .find(|m| m["name"] == "1n-acks1-1p-1k-rate50")
        .expect("rate step");
    let rate = step["rate_per_s"].as_f64().expect("rate");
    let max = medians
        .iter()
        .find(|m| m["name"] == "1n-acks1-1p-1k")
        .and_then(|m| m["records_per_s"].as_f64())
        .expect("max rate");
    if step["rate_disk_bound"].as_bool() == Some(true) {
        assert!(rate < max / 2.0, "disk-bound rate {rate} vs max {max}");
    } else {
        assert!((rate - max / 2.0).abs() < 1.0, "rate {rate} vs max {max}");
    }
    // The acks=all fixed-rate steps carry the disk's commit floor, acks=1 ones none.
    for (name, floor) in [
        ("1n-acksall-1p-1k-rate50", true),
        ("3n-rf3-acksall-1p-1k-rate50", true),
        ("1n-acks1-1p-1k-rate50", false),
    ] {
        let m = medians
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let p99 = m["commit_floor_us"]["p99"].as_f64();
        assert_eq!(p99.is_some(), floor, "{name}: commit floor {p99:?}");
        assert!(p99.unwrap_or(1.0) > 0.0, "{name}: commit floor p99 {p99:?}");
    }
    // Clients wrote their outcome with a timeline; plots exist.
    let client = json(&results.join("1n-acks1-1p-1k-run1-p0.json"));
    assert_eq!(client["records"].as_u64(), Some(4000));
    let timeline = client["timeline"].as_array().expect("timeline");
    let total: u64 = timeline.iter().filter_map(|i| i["records"].as_u64()).sum();
    assert_eq!(total, 4000, "timeline records");
    let plots = std::fs::read_dir(&results)
        .expect("results dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(plots >= 8, "{plots} plots");
    // The brokers' data went with them.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("rill-bench-"))
        .collect();
    assert!(left.is_empty(), "data left behind: {left:?}");
}
