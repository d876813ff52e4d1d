//! The `rill` command-line tool against a real rilld: topics, produce from stdin with
//! keys and headers, consume in every output format and from every start, cluster, and
//! the bench's printed figures.

mod client_common;

use std::process::{Command, Output};

use rill_client::partitioner::partition_for_key;
use rill_tests::{rill_bin, run_piped, RilldProcess};

fn rill(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(rill_bin());
    command.arg("--bootstrap-server").arg(bootstrap).args(args);
    let output = run_piped(command, stdin.map(str::as_bytes), "rill");
    assert!(
        output.status.success(),
        "rill {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 output")
}

#[test]
fn topic_produce_consume_and_cluster_commands_work_end_to_end() {
    let broker = RilldProcess::start();
    let b = broker.bootstrap();

    rill(
        &b,
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "3",
            "--config",
            "retention.ms=86400000",
        ],
        None,
    );
    assert!(stdout(&rill(&b, &["topic", "list"], None))
        .lines()
        .any(|l| l == "cli"));
    let described = stdout(&rill(&b, &["topic", "describe", "cli"], None));
    assert!(described.contains("topic cli  partitions 3"), "{described}");
    assert!(
        described.contains("config retention.ms=86400000"),
        "{described}"
    );

    let input: String = (0..300)
        .map(|n| format!("key{}=value {n}\n", n % 10))
        .collect();
    rill(
        &b,
        &[
            "produce",
            "cli",
            "--key-separator",
            "=",
            "--header",
            "src=cli",
            // acks=all: under the default fsync durability an acks=1 record becomes
            // visible only after the next flush, and the consume below stops at the end.
            "--acks",
            "all",
        ],
        Some(&input),
    );

    let json = stdout(&rill(
        &b,
        &[
            "consume",
            "cli",
            "--from-beginning",
            "--exit-at-end",
            "--format",
            "json",
        ],
        None,
    ));
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 300, "{json}");
    for n in 0..300 {
        let key = format!("key{}", n % 10);
        let partition = partition_for_key(key.as_bytes(), 3);
        let needle = format!("\"partition\":{partition},");
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("\"value\":\"value {n}\"")))
            .unwrap_or_else(|| panic!("value {n} missing"));
        assert!(line.contains(&format!("\"key\":\"{key}\"")), "{line}");
        assert!(line.contains(&needle), "{line}");
        assert!(line.contains("\"headers\":{\"src\":\"cli\"}"), "{line}");
    }

    // From an offset, with a count, key/value format.
    let kv = stdout(&rill(
        &b,
        &[
            "consume", "cli", "-p", "0", "--offset", "2", "--count", "2", "--format", "kv", "-K",
            "|",
        ],
        None,
    ));
    assert_eq!(kv.lines().count(), 2, "{kv}");
    assert!(
        kv.lines()
            .all(|l| l.starts_with("key") && l.contains("|value ")),
        "{kv}"
    );

    // From a time: everything was produced in the last hour.
    let recent = stdout(&rill(
        &b,
        &["consume", "cli", "--from-time", "-1h", "--exit-at-end"],
        None,
    ));
    assert_eq!(recent.lines().count(), 300);

    let cluster = stdout(&rill(&b, &["cluster"], None));
    assert!(cluster.contains("broker "), "{cluster}");

    rill(&b, &["topic", "delete", "cli"], None);
    assert!(!stdout(&rill(&b, &["topic", "list"], None))
        .lines()
        .any(|l| l == "cli"));
}

#[test]
fn bench_prints_throughput_and_latency_percentiles() {
    let broker = RilldProcess::start();
    let b = broker.bootstrap();
    let produced = stdout(&rill(
        &b,
        &[
            "bench",
            "produce",
            "bench",
            "--size",
            "1024",
            "--count",
            "5000",
            "--partitions",
            "2",
            "--acks",
            "all",
            "--quiet",
        ],
        None,
    ));
    assert!(
        produced.contains("produced: 5000 records, 5120000 bytes"),
        "{produced}"
    );
    for figure in ["MB/s", "records/s", "p50", "p90", "p99 ", "p99.9", "max"] {
        assert!(
            produced.contains(figure),
            "{figure} missing from:\n{produced}"
        );
    }
    // Produce requests' round trips, apart from the records' end-to-end latency.
    let requests: u64 = produced
        .lines()
        .find_map(|l| l.strip_prefix("request latency ms: p50 "))
        .and_then(|l| {
            l.rsplit_once('(')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no request latency line in:\n{produced}"));
    assert!(requests > 0, "{produced}");
    // At a fixed rate every record's own latency is measured, and all are counted.
    let paced = stdout(&rill(
        &b,
        &[
            "bench", "produce", "paced", "--size", "100", "--count", "2000", "--rate", "20000",
            "--quiet",
        ],
        None,
    ));
    assert!(
        paced.contains("produced: 2000 records, 200000 bytes"),
        "{paced}"
    );
    // With keys, over 3 partitions: the per-record path (a delivery future per record).
    let keyed = stdout(&rill(
        &b,
        &[
            "bench",
            "produce",
            "paced-keyed",
            "--keyed",
            "--partitions",
            "3",
            "--size",
            "100",
            "--count",
            "2000",
            "--rate",
            "20000",
            "--quiet",
        ],
        None,
    ));
    assert!(
        keyed.contains("produced: 2000 records, 200000 bytes"),
        "{keyed}"
    );
    let consumed = stdout(&rill(
        &b,
        &["bench", "consume", "bench", "--count", "5000", "--quiet"],
        None,
    ));
    assert!(
        consumed.contains("consumed: 5000 records, 5120000 bytes"),
        "{consumed}"
    );
    assert!(consumed.contains("p99.9"), "{consumed}");
}
