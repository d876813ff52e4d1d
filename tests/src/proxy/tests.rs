//! The proxy with real loopback sockets: an echo server behind it, a client in front.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};

use super::{Direction, FaultProxy};

/// How long a test waits for something that should happen promptly before it fails.
const PROMPT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen (bytes crossing a cut).
const QUIET: Duration = Duration::from_millis(300);

/// An echo server on a free loopback port; aborting the handle closes its connections.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let server = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let (mut stream, _) = accepted.expect("echo accept");
                    connections.spawn(async move {
                        let (mut read, mut write) = stream.split();
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                    });
                }
            }
        }
    });
    (addr, server)
}

async fn start_proxy(upstream: SocketAddr) -> FaultProxy {
    FaultProxy::start(upstream).await.expect("start proxy")
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect to proxy");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Writes `message` and reads as many bytes back (through the echo server).
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("write");
    let mut echoed = vec![0u8; message.len()];
    timeout(PROMPT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    echoed
}

/// `len` bytes of consecutive big-endian u32 counters: a loss, duplicate or reorder of
/// any chunk shows as a mismatch.
fn counting_pattern(len: usize) -> Vec<u8> {
    (0u32..).flat_map(u32::to_be_bytes).take(len).collect()
}

/// Reads exactly `expected.len()` bytes and checks they equal `expected`, naming the
/// first differing byte rather than printing megabytes.
async fn expect_bytes(read: &mut (impl AsyncRead + Unpin), expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    timeout(PROMPT * 3, read.read_exact(&mut got))
        .await
        .expect("all bytes in time")
        .expect("read");
    if let Some(at) = got.iter().zip(expected).position(|(g, e)| g != e) {
        panic!("bytes differ from byte {at} of {}", expected.len());
    }
}

/// True if the peer closed `stream` (EOF or reset) within PROMPT.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match timeout(PROMPT, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Polls `condition` until it holds; fails the test after PROMPT. For state the proxy
/// changes on its own (counters, the flap phase) that a test cannot await directly.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn bytes_pass_both_ways_and_are_counted() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let mut stream = connect(&proxy).await;

    assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");

    let faults = proxy.control();
    assert_eq!(faults.bytes_forwarded(Direction::Forward), 5);
    assert_eq!(faults.bytes_forwarded(Direction::Backward), 5);
    assert_eq!(faults.connections_accepted(), 1);
    assert_eq!(faults.connections_live(), 1);
    assert_eq!(proxy.upstream_addr(), echo);
}

#[tokio::test]
async fn forward_cut_holds_bytes_with_back_pressure_and_heal_delivers_them_in_order() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"before").await, b"before");

    faults.cut(Direction::Forward);
    let forwarded_before = faults.bytes_forwarded(Direction::Forward);
    // More than the kernel buffers of both sockets on this path can hold
    // (tcp_rmem max 32 MiB + tcp_wmem max 4 MiB here): if the proxy kept reading into
    // memory, the writer would finish.
    let payload = counting_pattern(48 << 20);
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move {
            write.write_all(&payload).await.expect("write through cut");
            write
        }
    });

    let mut byte = [0u8; 1];
    assert!(
        timeout(QUIET, read.read(&mut byte)).await.is_err(),
        "bytes came back through a forward cut"
    );
    assert_eq!(
        faults.bytes_forwarded(Direction::Forward),
        forwarded_before,
        "bytes crossed a forward cut"
    );
    assert!(
        !writer.is_finished(),
        "48 MiB written into a cut link: the proxy buffered instead of applying back-pressure"
    );

    faults.heal();
    expect_bytes(&mut read, &payload).await;
    writer.await.expect("writer");
    assert_eq!(
        faults.bytes_forwarded(Direction::Forward),
        forwarded_before + payload.len() as u64
    );
}

#[tokio::test]
async fn backward_cut_is_one_way() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"before").await, b"before");

    faults.cut(Direction::Backward);
    assert!(faults.is_cut(Direction::Backward));
    assert!(!faults.is_cut(Direction::Forward));
    stream.write_all(b"ping").await.expect("write");
    // The request reaches the upstream (the forward direction is open)...
    eventually("the ping to cross the open forward direction", || {
        faults.bytes_forwarded(Direction::Forward) == 10
    })
    .await;
    // ...but its answer is held.
    let mut byte = [0u8; 1];
    assert!(
        timeout(QUIET, stream.read(&mut byte)).await.is_err(),
        "an answer crossed a backward cut"
    );
    assert_eq!(faults.bytes_forwarded(Direction::Backward), 6);

    faults.heal();
    let mut echoed = [0u8; 4];
    timeout(PROMPT, stream.read_exact(&mut echoed))
        .await
        .expect("held answer after heal")
        .expect("read");
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn delay_adds_at_least_the_delay_and_keeps_order() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"warm").await, b"warm");

    faults.delay(Direction::Forward, Duration::from_millis(150));
    faults.delay(Direction::Backward, Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
    let round_trip_ms = started.elapsed().as_millis();
    assert!(
        round_trip_ms >= 250,
        "round trip took {round_trip_ms} ms under 150 + 100 ms of delay"
    );

    // Many separate writes, each its own chunk, come back whole and in order.
    let payload = counting_pattern(256 * 1024);
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move {
            for piece in payload.chunks(4096) {
                write.write_all(piece).await.expect("write");
            }
        }
    });
    expect_bytes(&mut read, &payload).await;
    writer.await.expect("writer");

    faults.delay(Direction::Forward, Duration::ZERO);
    faults.delay(Direction::Backward, Duration::ZERO);
}

#[tokio::test]
async fn drop_connections_closes_the_clients_socket_and_new_connections_work() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut first = connect(&proxy).await;
    assert_eq!(round_trip(&mut first, b"one").await, b"one");

    faults.drop_connections();
    assert!(
        closed_by_peer(&mut first).await,
        "the connection stayed open"
    );
    eventually("the dropped connection to end", || {
        faults.connections_live() == 0
    })
    .await;

    let mut second = connect(&proxy).await;
    assert_eq!(round_trip(&mut second, b"two").await, b"two");
    assert_eq!(faults.connections_accepted(), 2);
}

#[tokio::test]
async fn sever_closes_connections_and_refuses_new_ones_until_heal() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut before = connect(&proxy).await;
    assert_eq!(round_trip(&mut before, b"before").await, b"before");

    faults.sever();
    assert!(
        closed_by_peer(&mut before).await,
        "a live connection survived the sever"
    );

    // The kernel completes the handshake, then the proxy closes the connection
    // without forwarding a byte.
    let mut during = connect(&proxy).await;
    let _ = during.write_all(b"lost").await;
    assert!(
        closed_by_peer(&mut during).await,
        "a new connection was proxied while severed"
    );
    assert_eq!(faults.connections_refused(), 1);
    assert_eq!(faults.bytes_forwarded(Direction::Forward), 6);

    faults.heal();
    let mut after = connect(&proxy).await;
    assert_eq!(round_trip(&mut after, b"after").await, b"after");
}

#[tokio::test]
async fn flapping_cuts_and_heals_and_lets_data_through_eventually() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    faults.flap(Duration::from_millis(100), 0.5);
    eventually("a flap cut phase", || faults.is_cut(Direction::Forward)).await;
    eventually("a flap heal phase", || !faults.is_cut(Direction::Forward)).await;

    let stream = connect(&proxy).await;
    let payload = counting_pattern(1 << 20);
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move { write.write_all(&payload).await.expect("write") }
    });
    expect_bytes(&mut read, &payload).await;
    writer.await.expect("writer");

    faults.heal();
    assert!(!faults.is_cut(Direction::Forward));
    // Two periods with no cut phase: the schedule really stopped.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        assert!(
            !faults.is_cut(Direction::Forward),
            "flapping went on after heal"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections_and_ends_its_tasks() {
    let (echo, _echo) = echo_server().await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();

    let proxy = start_proxy(echo).await;
    let listen_addr = proxy.listen_addr();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
    proxy.control().flap(Duration::from_millis(50), 0.5);
    proxy
        .control()
        .delay(Direction::Forward, Duration::from_secs(60));
    stream.write_all(b"held in a delay").await.expect("write");

    drop(proxy);
    assert!(
        closed_by_peer(&mut stream).await,
        "the connection outlived the proxy"
    );
    // The proxy's acceptor, flapper and connection, and the echo server's side of it.
    eventually("the proxy's tasks to end", || {
        runtime.num_alive_tasks() == tasks_before
    })
    .await;
    assert!(
        TcpStream::connect(listen_addr).await.is_err(),
        "the proxy's port still accepts"
    );
}

#[tokio::test]
async fn shutdown_waits_for_every_connection_to_close() {
    let (echo, _echo) = echo_server().await;
    let proxy = start_proxy(echo).await;
    let faults = proxy.control().clone();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"x").await, b"x");
        streams.push(stream);
    }
    assert_eq!(faults.connections_live(), 3);

    timeout(PROMPT, proxy.shutdown())
        .await
        .expect("shutdown in time");
    assert_eq!(faults.connections_live(), 0);
    for stream in &mut streams {
        assert!(closed_by_peer(stream).await);
    }
}

#[tokio::test]
async fn a_non_loopback_upstream_is_refused() {
    let error = FaultProxy::start("192.0.2.1:9092".parse().expect("addr"))
        .await
        .err()
        .expect("a non-loopback upstream must fail");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
