//! `kcat` (Debian's, linking librdkafka 2.0.x) against the real `rilld`: metadata,
//! produce from stdin, and consume back byte-identical.

use std::io::Write;
use std::time::Duration;

use rill_tests::{kcat, RilldProcess};

const LINES: usize = 10_000;

#[test]
fn kcat_lists_produces_and_consumes_ten_thousand_lines_byte_identical() {
    let broker = RilldProcess::start();
    let b = broker.bootstrap();
    // Lines of different lengths and bytes (kcat -P skips empty lines, so none).
    let mut input = Vec::new();
    for i in 0..LINES {
        let filler: String = (0..(i % 97))
            .map(|j| (b'!' + ((i + j) % 90) as u8) as char)
            .collect();
        writeln!(input, "{i:05}|{filler}").unwrap();
    }

    // -P from stdin; the topic is auto-created by the producer's Metadata request.
    kcat(
        &["-b", &b, "-P", "-t", "lines", "-X", "acks=all"],
        Some(&input),
    );

    let listing = String::from_utf8(kcat(&["-b", &b, "-L", "-t", "lines"], None)).unwrap();
    assert!(listing.contains("1 brokers"), "{listing}");
    assert!(listing.contains(&format!("broker 1 at {b}")), "{listing}");
    assert!(
        listing.contains("topic \"lines\" with 1 partitions"),
        "{listing}"
    );
    assert!(
        listing.contains("partition 0, leader 1, replicas: 1, isrs: 1"),
        "{listing}"
    );

    let started = std::time::Instant::now();
    let output = kcat(
        &["-b", &b, "-C", "-t", "lines", "-o", "beginning", "-e", "-q"],
        None,
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(output.len(), input.len(), "same number of bytes");
    assert!(output == input, "consumed bytes differ from produced bytes");

    // Offsets are dense: -f prints each message's offset.
    let offsets = String::from_utf8(kcat(
        &[
            "-b", &b, "-C", "-t", "lines", "-o", "-3", "-e", "-q", "-f", "%o\n",
        ],
        None,
    ))
    .unwrap();
    // Dense after offset 0, the partition's LEADER_CHANGE control batch (kcat reads
    // past it): line n is at offset n + 1.
    assert_eq!(
        offsets,
        format!("{}\n{}\n{}\n", LINES - 2, LINES - 1, LINES)
    );
}
