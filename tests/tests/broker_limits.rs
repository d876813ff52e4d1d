//! The broker's limits on what peers can hold: the request byte budget
//! (`queued_request_max_bytes`) and the memory it bounds, the deadline for a started
//! frame (`request_read_timeout_ms`), connections per IP (`connections_max_per_ip`)
//! the idle timeout (`connections_max_idle_ms`), and a partition's uncommitted backlog.
//! Each test is about one limit and fails with that limit disabled.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiVersionsRequest, FetchRequest, ProduceRequest};
use rill_tests::raw::requests::{create_topic, fetch, produce};
use rill_tests::raw::{decode_records, partial_produce_frame, record_batch, RawConn};
use rill_tests::{proc_status_bytes, RilldProcess};

const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const API_VERSIONS_V: i16 = 3;

/// A connection to `addr` whose local end is bound to `local_ip` (any 127.x.y.z
/// address is loopback on Linux, so one test can be several client hosts).
fn connect_from(local_ip: IpAddr, addr: SocketAddr) -> RawConn {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local_ip, 0))
            .expect("bind the client end");
        socket.connect(addr).await.expect("connect")
    });
    let stream: TcpStream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    RawConn::from_stream(stream)
}

/// Produces `value` and reads it back at its offset, reconnecting when the broker
/// closes the connection (as Kafka clients do), until `deadline`.
fn produce_and_fetch_back(broker: &RilldProcess, topic: &str, value: &[u8], deadline: Instant) {
    let offset = loop {
        assert!(Instant::now() < deadline, "produce did not succeed in time");
        let mut conn = RawConn::connect(broker.addr());
        let request: ProduceRequest = produce(topic, 0, record_batch(&[value], 0), -1);
        if let Some(response) = conn.try_call(PRODUCE_V, &request) {
            let p = &response.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0, "{:?}", p.error_message);
            break p.base_offset;
        }
    };
    loop {
        assert!(Instant::now() < deadline, "fetch did not succeed in time");
        let mut conn = RawConn::connect(broker.addr());
        let request: FetchRequest = fetch(topic, 0, offset, 0, 1);
        if let Some(response) = conn.try_call(FETCH_V, &request) {
            let p = &response.responses[0].partitions[0];
            assert_eq!(p.error_code, 0);
            let records = decode_records(p.records.as_ref().expect("records"));
            assert_eq!(records[0], (offset, value.to_vec()));
            return;
        }
    }
}

#[test]
fn stalled_partial_frames_do_not_stop_a_client_and_close_after_the_read_timeout() {
    const STALLED: usize = 200;
    let read_timeout = Duration::from_millis(1000);
    // 200 announced 4 KiB frames want 800 KiB: far more than the 64 KiB budget, so
    // the stalled peers hold all of it and queue for more.
    let broker = RilldProcess::start_with(&[
        "--queued-request-max-bytes",
        "65536",
        "--request-read-timeout-ms",
        "1000",
        "--connections-max",
        "2000",
    ]);
    let mut setup = RawConn::connect(broker.addr());
    let response = setup.call(4, &create_topic("limits", 1, &[]));
    assert_eq!(response.topics[0].error_code, 0);

    let stall_started = Instant::now();
    let mut stalled: Vec<RawConn> = (0..STALLED)
        .map(|_| {
            let mut conn = RawConn::connect(broker.addr());
            conn.send_bytes(&partial_produce_frame(4096, 2048));
            conn
        })
        .collect();
    // The well-behaved client runs while the stalled peers are there; it is delayed
    // by at most about one read timeout (the budget frees as they are closed).
    let client = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let started = Instant::now();
            produce_and_fetch_back(&broker, "limits", b"through", started + 4 * read_timeout);
            started.elapsed()
        });
        // Stalled peers are closed, and not before the read timeout.
        for conn in &mut stalled {
            assert!(
                conn.is_closed_by_peer(),
                "a stalled connection is still open after 10 s"
            );
        }
        assert!(
            stall_started.elapsed() >= read_timeout,
            "stalled connections were closed before request_read_timeout_ms"
        );
        client.join().expect("client thread")
    });
    eprintln!("client produced and fetched in {client:?} alongside {STALLED} stalled peers");
    let mut conn = RawConn::connect(broker.addr());
    let versions = conn.call(API_VERSIONS_V, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
}

#[test]
fn small_requests_are_answered_at_once_while_stalled_frames_hold_the_whole_budget() {
    let read_timeout = Duration::from_millis(5000);
    let broker = RilldProcess::start_with(&[
        "--queued-request-max-bytes",
        "65536",
        "--request-read-timeout-ms",
        "5000",
    ]);
    // Two announced 32 KiB frames hold the whole budget; the third waits at the head of
    // the (fair) queue for it until its read timeout.
    let _stalled: Vec<RawConn> = (0..3)
        .map(|_| {
            let mut conn = RawConn::connect(broker.addr());
            conn.send_bytes(&partial_produce_frame(32 * 1024, 8));
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Small requests (at most 8 KiB) do not queue behind it: each connection has an
    // allowance of its own for them.
    let mut conn = RawConn::connect(broker.addr());
    for _ in 0..3 {
        let started = Instant::now();
        let versions = conn.call(API_VERSIONS_V, &ApiVersionsRequest::default());
        assert_eq!(versions.error_code, 0);
        assert!(
            started.elapsed() < read_timeout / 5,
            "a small request waited {:?} for the budget",
            started.elapsed()
        );
    }
}

#[test]
fn a_frame_larger_than_the_whole_budget_closes_only_its_connection() {
    let broker = RilldProcess::start_with(&["--queued-request-max-bytes", "65536"]);
    let mut bystander = RawConn::connect(broker.addr());
    let mut conn = RawConn::connect(broker.addr());
    // 64 KiB + 1 can never get its budget: waiting for it would stall the connection
    // forever, so it is refused from its size prefix.
    conn.send_bytes(&partial_produce_frame(65537, 8));
    assert!(
        conn.is_closed_by_peer(),
        "a frame larger than queued_request_max_bytes did not close its connection"
    );
    // At the budget exactly, a frame is read and answered (a Produce of an unknown
    // topic: any answer will do).
    let mut big = RawConn::connect(broker.addr());
    let value = vec![7u8; 60_000];
    let request: ProduceRequest = produce("nothing-here", 0, record_batch(&[&value], 0), 1);
    assert!(big.try_call(PRODUCE_V, &request).is_some());
    let versions = bystander.call(API_VERSIONS_V, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
}

#[test]
fn connections_beyond_the_per_ip_limit_are_closed_and_other_ips_are_served() {
    let broker = RilldProcess::start_with(&["--connections-max-per-ip", "5"]);
    let local: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut five: Vec<RawConn> = (0..5)
        .map(|_| {
            let mut conn = connect_from(local, broker.addr());
            let versions = conn.call(API_VERSIONS_V, &ApiVersionsRequest::default());
            assert_eq!(versions.error_code, 0);
            conn
        })
        .collect();
    let mut sixth = connect_from(local, broker.addr());
    assert!(
        sixth.is_closed_by_peer(),
        "the 6th connection from 127.0.0.1 was not closed"
    );
    let mut other_host = connect_from("127.0.0.2".parse().expect("ip"), broker.addr());
    let versions = other_host.call(API_VERSIONS_V, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    // A closed connection gives its slot back (the broker notices the close
    // asynchronously, so retry until a deadline).
    five.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = connect_from(local, broker.addr());
        if conn
            .try_call(API_VERSIONS_V, &ApiVersionsRequest::default())
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed per-IP slot was never reused"
        );
    }
    // The five that were served are still served.
    for conn in &mut five {
        let versions = conn.call(API_VERSIONS_V, &ApiVersionsRequest::default());
        assert_eq!(versions.error_code, 0);
    }
}

#[test]
fn an_idle_connection_is_closed_after_connections_max_idle_ms() {
    let idle_timeout = Duration::from_millis(500);
    let broker = RilldProcess::start_with(&["--connections-max-idle-ms", "500"]);
    let mut conn = RawConn::connect(broker.addr());
    // Timed from before the request: the broker's idle clock starts once it has
    // answered, which is after this and may be before the client has read the answer
    // (timed from the read, a close was once seen at 499.2 ms).
    let asked = Instant::now();
    let versions = conn.call(API_VERSIONS_V, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    assert!(
        conn.is_closed_by_peer(),
        "an idle connection is still open after 10 s"
    );
    assert!(
        asked.elapsed() >= idle_timeout,
        "closed {:?} after the request, before connections_max_idle_ms",
        asked.elapsed()
    );
    // A request in progress is not idleness: a Fetch long poll longer than the idle
    // timeout is answered.
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(4, &create_topic("idle", 1, &[]));
    assert_eq!(response.topics[0].error_code, 0);
    // From offset 1, the log end (0 is the LEADER_CHANGE control batch): a real wait.
    let started = std::time::Instant::now();
    let response = conn.call(FETCH_V, &fetch("idle", 0, 1, 1500, 1));
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the poll did not wait"
    );
}

#[test]
fn buffered_request_bodies_stay_within_the_budget() {
    const CONNECTIONS: usize = 64;
    const FRAME_BODY_BYTES: usize = 1 << 20;
    const BUDGET_BYTES: u64 = 8 << 20;
    // Allocator slack, per-connection state and the bytes read ahead before a frame's
    // budget is known (8 KiB per connection): what the broker may grow beyond the budget.
    const OVERHEAD_BYTES_MAX: u64 = 16 << 20;
    let broker = RilldProcess::start_with(&[
        "--queued-request-max-bytes",
        &BUDGET_BYTES.to_string(),
        "--request-read-timeout-ms",
        "2000",
        "--connections-max",
        "2000",
    ]);
    let pid = broker.pid().expect("running");
    let mut warm_up = RawConn::connect(broker.addr());
    assert_eq!(
        warm_up
            .call(API_VERSIONS_V, &ApiVersionsRequest::default())
            .error_code,
        0
    );
    let baseline = proc_status_bytes(pid, "VmRSS");
    // Every connection sends all of a 1 MiB Produce frame but its last byte: the
    // worst case, bodies the broker must hold and cannot finish. Without the budget
    // that is 64 MiB of buffered bodies.
    let frame = partial_produce_frame(FRAME_BODY_BYTES as i32, 4 + FRAME_BODY_BYTES - 1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|scope| {
        // Samples for exactly as long as the frames are held: until the broker has
        // closed every connection (request_read_timeout_ms).
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_status_bytes(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                scope.spawn(|| {
                    let mut conn = RawConn::connect(broker.addr());
                    // A connection waiting for budget is not read, so this write may
                    // only end with the broker closing the connection.
                    let _ = conn.try_send_bytes(&frame);
                    assert!(conn.is_closed_by_peer(), "a stalled frame was never closed");
                })
            })
            .collect();
        for sender in senders {
            sender.join().expect("sender");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "RSS baseline {} KiB, peak {} KiB, growth {} KiB (budget {} KiB)",
        baseline >> 10,
        peak >> 10,
        growth >> 10,
        BUDGET_BYTES >> 10
    );
    assert!(
        growth <= BUDGET_BYTES + OVERHEAD_BYTES_MAX,
        "RSS grew by {growth} bytes holding stalled frames; budget {BUDGET_BYTES} + {OVERHEAD_BYTES_MAX}"
    );
}

#[test]
fn the_admin_port_limits_connections_and_closes_stalled_ones() {
    // rill_broker::admin::ADMIN_CONNECTIONS_MAX and ADMIN_CONNECTION_TIMEOUT_MS.
    const ADMIN_CONNECTIONS_MAX: usize = 64;
    let admin_timeout = Duration::from_millis(10_000);
    let broker = RilldProcess::start();
    let opened = Instant::now();
    // Peers that connect and never send a request head.
    let mut stalled: Vec<TcpStream> = (0..ADMIN_CONNECTIONS_MAX)
        .map(|_| TcpStream::connect(broker.admin_addr()).expect("connect admin"))
        .collect();
    // The limit is reached once the broker has accepted all of them; the next
    // connection is then closed at once. Accepting is asynchronous: retry until a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut extra = TcpStream::connect(broker.admin_addr()).expect("connect admin");
        extra
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        if matches!(std::io::Read::read(&mut extra, &mut byte), Ok(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin connections beyond the limit are not closed"
        );
    }
    // The stalled ones are closed by the per-connection timeout, not before.
    for conn in &mut stalled {
        conn.set_read_timeout(Some(2 * admin_timeout))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let read = std::io::Read::read(conn, &mut byte);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a stalled admin connection was not closed"
        );
    }
    assert!(opened.elapsed() >= admin_timeout);
    // With the slots free again, the admin port serves.
    assert!(broker
        .admin_get("/metrics")
        .contains("rill_connections_total"));
}

/// A peer that pipelines Fetch requests but never reads the answers cannot hold their
/// request budget forever: once a response cannot be written for `connections_max_idle_ms`,
/// the connection is closed. Other clients are served meanwhile.
#[test]
fn a_peer_that_never_reads_its_responses_is_closed_after_the_idle_timeout() {
    const FETCHES: usize = 64;
    let broker = RilldProcess::start_with(&["--connections-max-idle-ms", "1000"]);
    let mut setup = RawConn::connect(broker.addr());
    let response = setup.call(4, &create_topic("unread", 1, &[]));
    assert_eq!(response.topics[0].error_code, 0);
    // 2 MiB in the log, so every Fetch below is answered with 1 MiB of records.
    let value = vec![7u8; 256 * 1024];
    for _ in 0..4 {
        let batch = record_batch(&[&value, &value], 0);
        let response = setup.call(PRODUCE_V, &produce("unread", 0, batch, -1));
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }

    // 64 MiB of answers: far more than the socket buffers hold.
    let mut deaf = RawConn::connect(broker.addr());
    for _ in 0..FETCHES {
        deaf.send(FETCH_V, &fetch("unread", 0, 0, 0, 1));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !broker.log().contains("responses not read by the peer") {
        assert!(
            Instant::now() < deadline,
            "a peer that does not read is still connected after 20 s"
        );
        // Meanwhile another client is served.
        assert_eq!(
            setup
                .call(API_VERSIONS_V, &ApiVersionsRequest::default())
                .error_code,
            0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the kernel had buffered is still readable (the last answer cut short), then
    // the connection ends.
    let read_bytes = deaf.drain_to_eof();
    assert!(
        read_bytes < FETCHES << 20,
        "{read_bytes} bytes: every answer arrived"
    );
}

/// The uncommitted backlog (`QUEUED_BYTES_MAX`, 256 MiB a partition's group holds
/// appended but not committed): an acks=1 producer that runs ahead of a slow disk is
/// slowed down, not refused. Every flush is held back 2 s, so one connection's appends
/// pass the limit within a round; every request must still be answered without an
/// error, at the next offsets. (Before, the core's refusal came after the write: the
/// batch was cut back out of the segment, a copy of the segment and fsyncs, and the
/// request was answered NOT_ENOUGH_REPLICAS for the client to retry.)
#[test]
fn an_acks_1_producer_ahead_of_the_disk_waits_for_the_commit_instead_of_being_refused() {
    let broker = RilldProcess::start_with(&["--debug-flush-delay-ms", "2000"]);
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(
        conn.call(4, &create_topic("backlog", 1, &[])).topics[0].error_code,
        0
    );
    // 1,000 records of 1,000 bytes: one batch just under max.message.bytes (1 MiB).
    const RECORDS: i64 = 1_000;
    let value = vec![7u8; 1_000];
    let values: Vec<&[u8]> = vec![&value; RECORDS as usize];
    let batch = record_batch(&values, 1_700_000_000_000);
    // 300 batches of ~1 MB: more than the 256 MiB limit.
    // (The log starts with the leader's own entry: offsets follow the first answer.)
    let mut next_offset = None;
    for i in 0..300 {
        let response = conn.call(PRODUCE_V, &produce("backlog", 0, batch.clone(), 1));
        let p = &response.responses[0].partition_responses[0];
        let next_offset = next_offset.get_or_insert(p.base_offset.max(0));
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, *next_offset),
            "request {i}: {:?}",
            p.error_message
        );
        *next_offset += RECORDS;
    }
    assert!(
        broker.metric("rill_appends_backlogged_total") > 0,
        "the appends never reached the backlog limit: this test proved nothing"
    );
}
