//! Transports over real loopback sockets. Every wait is bounded by [`WAIT`]; nothing
//! sleeps hoping something happened: tests await deliveries or poll counters.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rill_raft::{Entry, EntryKind, Message, MessageBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::*;
use crate::replica::hard_state::ReplicaKey;
use crate::replica::store::raft_node_id;

const CLUSTER: &str = "transport-test";
/// Upper bound on any wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn config(broker_id: BrokerId) -> TransportConfig {
    let mut config = TransportConfig::new(broker_id, CLUSTER, "127.0.0.1:0".parse().unwrap());
    config.frame_bytes_max = 1024 * 1024;
    config.inflight_bytes_max = 4 * 1024 * 1024;
    config
}

async fn start_with(config: TransportConfig) -> (Transport, mpsc::Receiver<InboundBatch>) {
    let (tx, rx) = mpsc::channel(64);
    let transport = Transport::start(config, HashMap::new(), tx)
        .await
        .expect("transport starts");
    (transport, rx)
}

/// Starts one transport per broker id and makes every one a peer of every other.
async fn mesh(ids: &[BrokerId]) -> Vec<(Transport, mpsc::Receiver<InboundBatch>)> {
    mesh_of(ids.iter().map(|id| config(*id)).collect()).await
}

/// Starts one transport per configuration and makes every one a peer of every other.
async fn mesh_of(configs: Vec<TransportConfig>) -> Vec<(Transport, mpsc::Receiver<InboundBatch>)> {
    let ids: Vec<BrokerId> = configs.iter().map(|c| c.broker_id).collect();
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(start_with(config).await);
    }
    let addrs: HashMap<BrokerId, SocketAddr> = ids
        .iter()
        .zip(&nodes)
        .map(|(id, (t, _))| (*id, t.local_addr()))
        .collect();
    for (t, _) in &nodes {
        t.set_peers(addrs.clone());
    }
    nodes
}

fn group(n: u32) -> ReplicaKey {
    (Uuid::from_u128(0xfeed_0000 + u128::from(n)), n as i32)
}

/// An append whose one entry's base offset is `sequence` and whose data names it.
fn append(from: BrokerId, to: BrokerId, g: u32, sequence: u64) -> Envelope {
    let data = Bytes::from(format!("batch {from}->{to} group {g} seq {sequence} ").repeat(20));
    Envelope {
        group: group(g),
        message: Message {
            from: raft_node_id(from),
            to: raft_node_id(to),
            term: 3,
            body: MessageBody::Append {
                prev_end_offset: sequence,
                prev_term: 3,
                entries: vec![Entry {
                    term: 3,
                    base_offset: sequence,
                    end_offset: sequence + 1,
                    kind: EntryKind::Data,
                    data,
                }],
                commit_offset: sequence,
            },
        },
    }
}

fn heartbeat(from: BrokerId, to: BrokerId, g: u32, commit_offset: u64) -> Envelope {
    Envelope {
        group: group(g),
        message: Message {
            from: raft_node_id(from),
            to: raft_node_id(to),
            term: 3,
            body: MessageBody::Heartbeat {
                commit_offset,
                quiesce: false,
            },
        },
    }
}

/// Receives until `count` envelopes arrived (bounded by [`WAIT`]).
async fn receive(rx: &mut mpsc::Receiver<InboundBatch>, count: usize) -> Vec<(BrokerId, Envelope)> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < count {
            let batch = rx.recv().await.expect("transport alive");
            got.extend(batch.envelopes.into_iter().map(|e| (batch.from_broker, e)));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {count} envelopes arrived", got.len()));
    got
}

/// Waits until `condition` holds, checking every few milliseconds (for counters,
/// which have nothing to await).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// A port nothing listens on (bound, read, released).
async fn unused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn shutdown_all(nodes: Vec<(Transport, mpsc::Receiver<InboundBatch>)>) {
    for (t, _) in nodes {
        tokio::time::timeout(WAIT, t.shutdown())
            .await
            .expect("shutdown ends");
    }
}

#[tokio::test]
async fn two_transports_exchange_appends_of_several_groups_both_ways_in_send_order() {
    let mut nodes = mesh(&[0, 1]).await;
    let per_group = 50;
    for sequence in 0..per_group {
        for g in 0..4 {
            nodes[0].0.send(1, append(0, 1, g, sequence)).unwrap();
            nodes[1].0.send(0, append(1, 0, g, sequence)).unwrap();
        }
    }
    for (me, other) in [(1usize, 0), (0, 1)] {
        let got = receive(&mut nodes[me].1, 4 * per_group as usize).await;
        let expected: Vec<Envelope> = (0..per_group)
            .flat_map(|s| (0..4).map(move |g| append(other, me as BrokerId, g, s)))
            .collect();
        assert!(got.iter().all(|(from, _)| *from == other));
        let got: Vec<Envelope> = got.into_iter().map(|(_, e)| e).collect();
        assert_eq!(got, expected, "entries intact and in send order");
    }
    let counters = nodes[0].0.counters();
    assert_eq!(
        TransportCounters::get(&counters.messages_sent),
        4 * per_group
    );
    assert_eq!(
        TransportCounters::get(&counters.messages_received),
        4 * per_group
    );
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn three_transports_each_reach_both_others() {
    let ids = [3, 7, 9];
    let mut nodes = mesh(&ids).await;
    for (i, from) in ids.iter().enumerate() {
        for to in ids.iter().filter(|to| *to != from) {
            for sequence in 0..20 {
                nodes[i]
                    .0
                    .send(*to, append(*from, *to, sequence as u32 % 3, sequence))
                    .unwrap();
            }
        }
    }
    for (i, me) in ids.iter().enumerate() {
        let got = receive(&mut nodes[i].1, 40).await;
        for from in ids.iter().filter(|from| *from != me) {
            let from_peer: Vec<&Envelope> = got
                .iter()
                .filter(|(f, _)| f == from)
                .map(|(_, e)| e)
                .collect();
            let expected: Vec<Envelope> = (0..20)
                .map(|s| append(*from, *me, s as u32 % 3, s))
                .collect();
            assert_eq!(from_peer, expected.iter().collect::<Vec<_>>());
        }
    }
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_thousand_heartbeats_queued_while_the_peer_is_unreachable_arrive_as_one() {
    let down = unused_addr().await;
    let (sender, _rx) = start_with(config(1)).await;
    sender.set_peers(HashMap::from([(2, down)]));
    for commit_offset in 0..1000 {
        sender.send(2, heartbeat(1, 2, 5, commit_offset)).unwrap();
    }
    let counters = sender.counters();
    assert_eq!(TransportCounters::get(&counters.heartbeats_coalesced), 999);
    // The peer comes up on the address the sender keeps retrying.
    let mut receiver_config = config(2);
    receiver_config.listen_addr = down;
    let (receiver, mut rx) = start_with(receiver_config).await;
    // A data message queued after the heartbeats marks the end of what was pending.
    sender.send(2, append(1, 2, 5, 0)).unwrap();
    let got = receive(&mut rx, 2).await;
    let heartbeats: Vec<&Envelope> = got
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.message.is_heartbeat())
        .collect();
    assert_eq!(heartbeats, vec![&heartbeat(1, 2, 5, 999)]);
    assert_eq!(got.last().map(|(_, e)| e), Some(&append(1, 2, 5, 0)));
    sender.shutdown().await;
    receiver.shutdown().await;
}

/// Sends `bytes` on a raw connection and reports whether the transport hung up
/// (EOF or reset) within [`WAIT`].
async fn hung_up_after(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    // The transport may close before reading everything; a failed write is a hang-up too.
    if raw.write_all(bytes).await.is_err() {
        return true;
    }
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                // The transport answers a valid handshake with its own; keep reading.
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn raw_hello(broker_id: BrokerId, cluster_id: &str) -> Vec<u8> {
    codec::encode_hello(&Hello {
        broker_id,
        cluster_id: cluster_id.into(),
        registration: config(broker_id).registration,
        known_incarnation: None,
    })
    .to_vec()
}

#[tokio::test]
async fn peers_sending_garbage_are_disconnected_and_the_good_peer_is_still_served() {
    let mut nodes = mesh(&[0, 1]).await;
    let addr = nodes[1].0.local_addr();

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(hung_up_after(addr, &random).await, "random bytes");
    assert!(
        hung_up_after(addr, &raw_hello(5, "another-cluster")).await,
        "handshake of another cluster"
    );
    assert!(
        hung_up_after(addr, &raw_hello(1, CLUSTER)).await,
        "handshake with our own id"
    );
    // 2 GiB announced as the handshake, then after a valid handshake as a frame.
    assert!(
        hung_up_after(addr, &0x8000_0000u32.to_be_bytes()).await,
        "2 GiB handshake"
    );
    let mut oversized = raw_hello(5, CLUSTER);
    oversized.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    oversized.extend_from_slice(&[0u8; 64]);
    assert!(hung_up_after(addr, &oversized).await, "2 GiB frame");
    // A frame whose messages claim to come from a broker other than the handshake's.
    let mut spoofed = raw_hello(5, CLUSTER);
    spoofed.extend_from_slice(&codec::encode_frame(5, &[append(0, 1, 0, 0)]).to_bytes());
    assert!(hung_up_after(addr, &spoofed).await, "spoofed sender");
    // A frame addressed to a Raft node other than the receiver's.
    let mut misaddressed = raw_hello(5, CLUSTER);
    misaddressed.extend_from_slice(&codec::encode_frame(5, &[append(5, 4, 0, 0)]).to_bytes());
    assert!(hung_up_after(addr, &misaddressed).await, "misaddressed");
    // A frame cut off by a bad tag after a valid handshake.
    let mut bad_tag = raw_hello(5, CLUSTER);
    let mut frame = codec::encode_frame(5, &[heartbeat(5, 1, 0, 1)])
        .to_bytes()
        .to_vec();
    // The body tag sits before the heartbeat's commit offset (8 bytes) and flag (1).
    let last = frame.len() - 10;
    frame[last] = 0xee;
    bad_tag.extend_from_slice(&frame);
    assert!(hung_up_after(addr, &bad_tag).await, "unknown body tag");

    eventually("every rejection counted", || {
        TransportCounters::get(&nodes[1].0.counters().inbound_rejected) == 8
    })
    .await;
    nodes[0].0.send(1, append(0, 1, 0, 42)).unwrap();
    let got = receive(&mut nodes[1].1, 1).await;
    assert_eq!(got, vec![(0, append(0, 1, 0, 42))]);
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_claimed_frame_length_reserves_no_memory_before_its_bytes_arrive() {
    // The same reader setup the inbound connection uses, over an in-memory pipe.
    let frame_bytes_max = 64 * 1024 * 1024;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut frames = FramedRead::new(server, FrameDecoder::new(frame_bytes_max));
    client
        .write_all(&((frame_bytes_max - 1) as u32).to_be_bytes())
        .await
        .unwrap();
    client.write_all(&[7u8; 100]).await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(50), frames.next()).await;
    assert!(pending.is_err(), "an incomplete frame is not an error");
    let capacity = frames.read_buffer().capacity();
    assert!(
        capacity <= 256 * 1024,
        "reserved {capacity} bytes for a 64 MiB claim"
    );
}

#[tokio::test]
async fn the_sender_reconnects_to_a_restarted_peer_and_later_messages_arrive() {
    let mut nodes = mesh(&[0, 1]).await;
    nodes[0].0.send(1, append(0, 1, 0, 0)).unwrap();
    receive(&mut nodes[1].1, 1).await;
    let addr = nodes[1].0.local_addr();
    let (old, _) = nodes.pop().unwrap();
    old.shutdown().await;
    drop(old);

    let mut restarted_config = config(1);
    restarted_config.listen_addr = addr;
    let (restarted, mut rx) = start_with(restarted_config).await;
    // Messages sent into the dying connection may be lost (Raft retransmits), so keep
    // sending, as Raft would, until one gets through.
    let mut sequence = 1;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            nodes[0].0.send(1, append(0, 1, 0, sequence)).unwrap();
            sequence += 1;
            if let Ok(Some(batch)) =
                tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            {
                return batch;
            }
        }
    })
    .await
    .expect("a message reaches the restarted peer");
    assert_eq!(got.from_broker, 0);
    assert!(TransportCounters::get(&nodes[0].0.counters().reconnects) >= 1);
    // Once connected, messages arrive in order with none lost.
    let first = match &got.envelopes[0].message.body {
        MessageBody::Append {
            prev_end_offset, ..
        } => *prev_end_offset,
        other => panic!("unexpected {other:?}"),
    };
    let already = got.envelopes.len() as u64;
    let end = sequence + 10;
    for s in sequence..end {
        nodes[0].0.send(1, append(0, 1, 0, s)).unwrap();
    }
    let rest = receive(&mut rx, (end - first - already) as usize).await;
    let sequences: Vec<u64> = got
        .envelopes
        .iter()
        .chain(rest.iter().map(|(_, e)| e))
        .map(|e| match &e.message.body {
            MessageBody::Append {
                prev_end_offset, ..
            } => *prev_end_offset,
            _ => u64::MAX,
        })
        .collect();
    assert_eq!(sequences, (first..end).collect::<Vec<_>>());
    restarted.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn with_the_peer_down_queued_bytes_stay_within_the_limit_and_drops_are_counted() {
    let mut config = config(1);
    config.frame_bytes_max = 64 * 1024;
    config.inflight_bytes_max = 256 * 1024;
    let limit = config.inflight_bytes_max;
    let (sender, _rx) = start_with(config).await;
    sender.set_peers(HashMap::from([(2, unused_addr().await)]));
    let mut refused = 0;
    for sequence in 0..1000 {
        match sender.send(2, append(1, 2, 0, sequence)) {
            Ok(()) => {}
            Err(SendError::QueueFull(2)) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
        let queued = sender.queued_bytes(2).unwrap();
        assert!(queued <= limit, "{queued} bytes queued, limit {limit}");
    }
    // No more can be queued than fit at the smallest message size.
    let one_min = append(1, 2, 0, 0).encoded_bytes();
    let one_max = append(1, 2, 0, 999).encoded_bytes();
    assert!(refused >= 1000 - limit / one_min, "only {refused} refused");
    assert!(
        sender.queued_bytes(2).unwrap() > limit - one_max,
        "the queue filled up"
    );
    let counters = sender.counters();
    assert_eq!(
        TransportCounters::get(&counters.messages_dropped_queue_full),
        refused as u64
    );
    // A message too large for any frame is refused up front.
    let mut huge = append(1, 2, 0, 0);
    if let MessageBody::Append { entries, .. } = &mut huge.message.body {
        entries[0].data = Bytes::from(vec![0u8; 64 * 1024]);
    }
    assert!(matches!(
        sender.send(2, huge),
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(
        sender.send(9, append(1, 9, 0, 0)),
        Err(SendError::UnknownPeer(9))
    );
    sender.shutdown().await;
    assert_eq!(sender.send(2, append(1, 2, 0, 0)), Err(SendError::ShutDown));
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_never_sent_to() {
    let (stranger, mut stranger_rx) = {
        let mut c = config(2);
        c.cluster_id = "someone-else".into();
        start_with(c).await
    };
    let (sender, _rx) = start_with(config(1)).await;
    sender.set_peers(HashMap::from([(2, stranger.local_addr())]));
    sender.send(2, append(1, 2, 0, 0)).unwrap();
    eventually("a refused handshake", || {
        TransportCounters::get(&sender.counters().connect_failures) >= 1
    })
    .await;
    assert!(stranger_rx.try_recv().is_err());
    assert_eq!(TransportCounters::get(&sender.counters().messages_sent), 0);
    sender.shutdown().await;
    stranger.shutdown().await;
}

#[test]
fn config_validation_names_the_key() {
    let mut c = config(1);
    c.frame_bytes_max = usize::MAX;
    assert!(matches!(
        c.validate(),
        Err(TransportError::Config {
            key: "frame_bytes_max",
            ..
        })
    ));
    let mut c = config(1);
    c.inflight_bytes_max = c.frame_bytes_max - 1;
    assert!(matches!(
        c.validate(),
        Err(TransportError::Config {
            key: "inflight_bytes_max",
            ..
        })
    ));
    let mut c = config(1);
    c.reconnect_backoff_ms_min = 5_000;
    assert!(matches!(
        c.validate(),
        Err(TransportError::Config {
            key: "reconnect_backoff_ms_min",
            ..
        })
    ));
    let c = config(1).with_registration(registration("", 9092, None));
    assert!(matches!(
        c.validate(),
        Err(TransportError::Config {
            key: "registration.client_host",
            ..
        })
    ));
    let c = config(1).with_registration(registration("h", 9092, Some(&"r".repeat(256))));
    assert!(matches!(
        c.validate(),
        Err(TransportError::Config {
            key: "registration.rack",
            ..
        })
    ));
    assert!(config(1).validate().is_ok());
}

#[tokio::test]
async fn a_changed_address_moves_the_connection_and_a_removed_peer_is_forgotten() {
    let (sender, _rx) = start_with(config(1)).await;
    let (first, mut first_rx) = start_with(config(2)).await;
    let (second, mut second_rx) = start_with(config(2)).await;
    sender.set_peers(HashMap::from([(2, first.local_addr())]));
    sender.send(2, append(1, 2, 0, 0)).unwrap();
    assert_eq!(
        receive(&mut first_rx, 1).await,
        vec![(1, append(1, 2, 0, 0))]
    );

    sender.set_peers(HashMap::from([(2, second.local_addr())]));
    // A message may still leave on the old connection before the task sees the move.
    let got = tokio::time::timeout(WAIT, async {
        let mut sequence = 1;
        loop {
            sender.send(2, append(1, 2, 0, sequence)).unwrap();
            sequence += 1;
            if let Ok(Some(batch)) =
                tokio::time::timeout(Duration::from_millis(100), second_rx.recv()).await
            {
                return batch;
            }
        }
    })
    .await
    .expect("the moved peer is reached");
    assert_eq!(got.from_broker, 1);

    sender.set_peers(HashMap::new());
    assert_eq!(sender.queued_bytes(2), None);
    assert_eq!(
        sender.send(2, append(1, 2, 0, 0)),
        Err(SendError::UnknownPeer(2))
    );
    tokio::time::timeout(WAIT, sender.shutdown())
        .await
        .expect("shutdown ends");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_frame_of_one_append_is_read_into_a_buffer_reserved_once() {
    let frame_bytes_max = 64 * 1024 * 1024;
    let body_bytes = 512 * 1024;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut frames = FramedRead::new(server, FrameDecoder::new(frame_bytes_max));
    client
        .write_all(&(body_bytes as u32).to_be_bytes())
        .await
        .unwrap();
    client.write_all(&[7u8; 100]).await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(50), frames.next()).await;
    assert!(pending.is_err(), "an incomplete frame is not an error");
    let capacity = frames.read_buffer().capacity();
    assert!(
        capacity >= FRAME_PREFIX_BYTES + body_bytes,
        "only {capacity} bytes reserved"
    );
    // The rest arrives into that buffer: the frame is one allocation, never regrown
    // (which would copy what had arrived).
    let address = frames.read_buffer().as_ptr();
    let writer = tokio::spawn(async move {
        client
            .write_all(&vec![7u8; body_bytes - 100])
            .await
            .unwrap();
        client
    });
    let frame = tokio::time::timeout(WAIT, frames.next())
        .await
        .expect("the frame arrives")
        .expect("not EOF")
        .expect("valid");
    writer.await.unwrap();
    assert_eq!(frame.len(), body_bytes);
    assert_eq!(frame.as_ptr(), address.wrapping_add(FRAME_PREFIX_BYTES));
}

#[tokio::test]
async fn a_consumer_that_stops_reading_pushes_back_to_the_senders_bounded_queue() {
    // The receiver's channel holds one batch and nobody reads it: its connection stops
    // reading, TCP fills, the sender's writer blocks, its queue fills, and it drops.
    let (tx, mut stalled_rx) = mpsc::channel(1);
    let receiver = Transport::start(config(2), HashMap::new(), tx)
        .await
        .unwrap();
    let mut sender_config = config(1);
    sender_config.frame_bytes_max = 256 * 1024;
    sender_config.inflight_bytes_max = 1024 * 1024;
    let limit = sender_config.inflight_bytes_max;
    let (sender, _rx) = start_with(sender_config).await;
    sender.set_peers(HashMap::from([(2, receiver.local_addr())]));
    // One shared 200 KiB buffer: every append refers to it, so the test itself holds
    // no memory per message while the socket path moves gigabytes' worth if unbounded.
    let data = Bytes::from(vec![5u8; 200 * 1024]);
    let big = |sequence: u64| {
        let mut envelope = append(1, 2, 0, sequence);
        if let MessageBody::Append { entries, .. } = &mut envelope.message.body {
            entries[0].data = data.clone();
        }
        envelope
    };
    let mut sequence = 0;
    tokio::time::timeout(WAIT, async {
        while TransportCounters::get(&sender.counters().messages_dropped_queue_full) == 0 {
            let _ = sender.send(2, big(sequence));
            sequence += 1;
            let queued = sender.queued_bytes(2).unwrap();
            assert!(queued <= limit, "{queued} bytes queued, limit {limit}");
            // Let the writer and the receiver run between sends.
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sender's queue fills once the consumer stops reading");
    // The receiver buffered no more than what the channel and one frame hold.
    let received = TransportCounters::get(&receiver.counters().messages_received);
    assert!(received < sequence, "{received} of {sequence} received");
    // Reading again drains what was queued.
    let first = stalled_rx.recv().await.expect("a batch");
    assert_eq!(first.envelopes[0], big(0));
    sender.shutdown().await;
    receiver.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_reconnected_after_the_write_stall_timeout() {
    // A fake peer that completes the handshake, then never reads again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted_rx) = mpsc::channel(8);
    let fake = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await.unwrap();
            let mut hello = vec![0u8; u32::from_be_bytes(prefix) as usize];
            stream.read_exact(&mut hello).await.unwrap();
            stream.write_all(&raw_hello(2, CLUSTER)).await.unwrap();
            held.push(stream);
            accepted_tx.send(()).await.unwrap();
        }
    });
    let mut config = config(1);
    config.write_stall_timeout_ms = 200;
    let (sender, _rx) = start_with(config).await;
    sender.set_peers(HashMap::from([(2, addr)]));
    accepted_rx.recv().await.unwrap();
    let data = Bytes::from(vec![1u8; 200 * 1024]);
    tokio::time::timeout(WAIT, async {
        let mut sequence = 0;
        // Keep the queue full until the stalled write times out and a second
        // connection is made.
        while accepted_rx.try_recv().is_err() {
            let mut envelope = append(1, 2, 0, sequence);
            if let MessageBody::Append { entries, .. } = &mut envelope.message.body {
                entries[0].data = data.clone();
            }
            let _ = sender.send(2, envelope);
            sequence += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the sender gives up on the stalled connection and reconnects");
    let counters = sender.counters();
    assert!(TransportCounters::get(&counters.messages_dropped_disconnected) >= 1);
    // The sender counts the reconnect once it has read the fake's handshake.
    eventually("a counted reconnect", || {
        TransportCounters::get(&counters.reconnects) >= 1
    })
    .await;
    sender.shutdown().await;
    fake.abort();
}

fn registration(host: &str, port: u16, rack: Option<&str>) -> BrokerRegistrationInfo {
    BrokerRegistrationInfo {
        client_host: host.into(),
        client_port: port,
        inter_broker_host: "127.0.0.1".into(),
        inter_broker_port: 9093,
        rack: rack.map(Into::into),
        incarnation_id: BrokerRegistrationInfo::random_incarnation_id(),
    }
}

/// Waits (bounded by [`WAIT`]) until `transport` knows a registration of `broker`
/// that satisfies `wanted`, waking on each bump of `changed`; returns it.
async fn registration_of(
    transport: &Transport,
    changed: &mut watch::Receiver<u64>,
    broker: BrokerId,
    wanted: impl Fn(&BrokerRegistrationInfo) -> bool,
) -> BrokerRegistrationInfo {
    tokio::time::timeout(WAIT, async {
        loop {
            // Marked seen before the map is read, so a change after the read wakes us.
            changed.borrow_and_update();
            if let Some(info) = transport.peer_registrations().get(&broker) {
                if wanted(info) {
                    return info.clone();
                }
            }
            changed.changed().await.expect("transport alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no wanted registration of broker {broker} arrived"))
}

#[tokio::test]
async fn two_transports_with_different_registrations_learn_each_others() {
    let first = registration("broker-0.example", 19092, Some("rack-a"));
    let second = registration("10.0.0.2", 29092, None);
    let nodes = mesh_of(vec![
        config(0).with_registration(first.clone()),
        config(1).with_registration(second.clone()),
    ])
    .await;
    let mut changed_0 = nodes[0].0.registrations_changed();
    let mut changed_1 = nodes[1].0.registrations_changed();
    assert_eq!(
        registration_of(&nodes[0].0, &mut changed_0, 1, |_| true).await,
        second
    );
    assert_eq!(
        registration_of(&nodes[1].0, &mut changed_1, 0, |_| true).await,
        first
    );
    // Each knows the other only: never itself.
    assert_eq!(
        nodes[0].0.peer_registrations(),
        HashMap::from([(1, second)])
    );
    assert_eq!(nodes[1].0.peer_registrations(), HashMap::from([(0, first)]));
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_restarted_peer_replaces_its_old_incarnation_and_bumps_the_watch() {
    let old_registration = registration("broker-1.example", 9092, Some("rack-b"));
    let mut nodes = mesh_of(vec![
        config(0),
        config(1).with_registration(old_registration.clone()),
    ])
    .await;
    let mut changed = nodes[0].0.registrations_changed();
    let seen = registration_of(&nodes[0].0, &mut changed, 1, |_| true).await;
    assert_eq!(seen, old_registration);
    let version_before = *changed.borrow_and_update();

    // Broker 1 stops: its connection to broker 0 closes, and its entry stays.
    let addr_0 = nodes[0].0.local_addr();
    let (old, _) = nodes.pop().unwrap();
    old.shutdown().await;
    drop(old);
    let counters = Arc::clone(nodes[0].0.counters());
    eventually("broker 1's inbound connection to end", || {
        TransportCounters::get(&counters.inbound_ended) >= 1
    })
    .await;
    assert_eq!(
        nodes[0].0.peer_registrations(),
        HashMap::from([(1, old_registration.clone())])
    );
    assert!(!changed.has_changed().unwrap(), "a close is no change");

    // It starts again: same host, port and rack, a new incarnation.
    let new_registration = BrokerRegistrationInfo {
        incarnation_id: BrokerRegistrationInfo::random_incarnation_id(),
        ..old_registration.clone()
    };
    assert_ne!(new_registration, old_registration);
    let (restarted, _rx) = start_with(config(1).with_registration(new_registration.clone())).await;
    restarted.set_peers(HashMap::from([(0, addr_0)]));
    let seen = registration_of(&nodes[0].0, &mut changed, 1, |info| {
        info.incarnation_id != old_registration.incarnation_id
    })
    .await;
    assert_eq!(seen, new_registration);
    assert!(*changed.borrow() > version_before, "the watch was bumped");
    assert_eq!(
        nodes[0].0.peer_registrations(),
        HashMap::from([(1, new_registration)])
    );
    restarted.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_handshake_with_an_over_long_host_or_of_version_1_is_refused_and_closed() {
    let (receiver, _rx) = start_with(config(1)).await;
    let addr = receiver.local_addr();
    let mut changed = receiver.registrations_changed();
    let mut hello = Hello {
        broker_id: 5,
        cluster_id: CLUSTER.into(),
        registration: registration("h", 9092, None),
        known_incarnation: None,
    };
    hello.registration.client_host = "h".repeat(codec::CLIENT_HOST_BYTES_MAX + 1);
    let over_long = codec::encode_hello_unchecked(&hello);
    assert!(
        over_long.len() - FRAME_PREFIX_BYTES <= codec::HELLO_BYTES_MAX,
        "within the handshake's frame limit, so it is the host check that refuses it"
    );
    assert!(hung_up_after(addr, &over_long).await, "over-long host");
    // A peer of the previous build: its handshake, version 1, has no registration.
    let mut version_1 = Vec::new();
    version_1.extend_from_slice(&(4 + 1 + 4 + 2 + CLUSTER.len() as u32).to_be_bytes());
    version_1.extend_from_slice(&codec::HELLO_MAGIC);
    version_1.push(1);
    version_1.extend_from_slice(&5i32.to_be_bytes());
    version_1.extend_from_slice(&(CLUSTER.len() as i16).to_be_bytes());
    version_1.extend_from_slice(CLUSTER.as_bytes());
    assert!(hung_up_after(addr, &version_1).await, "version 1 handshake");
    eventually("both rejections counted", || {
        TransportCounters::get(&receiver.counters().inbound_rejected) == 2
    })
    .await;
    assert!(receiver.peer_registrations().is_empty());
    assert!(!changed.has_changed().unwrap());

    // The same peer with a host at the limit is accepted and registered.
    hello.registration.client_host = "h".repeat(codec::CLIENT_HOST_BYTES_MAX);
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&codec::encode_hello(&hello)).await.unwrap();
    let seen = registration_of(&receiver, &mut changed, 5, |_| true).await;
    assert_eq!(seen, hello.registration);
    drop(raw);
    receiver.shutdown().await;
}

/// A configuration with short keepalives and sessions, so identity tests run quickly.
fn quick_sessions(broker_id: BrokerId) -> TransportConfig {
    let mut config = config(broker_id);
    config.keepalive_interval_ms = 50;
    config.session_timeout_ms = 400;
    config
}

/// Waits until `transport` reports itself fenced; returns the reason.
async fn fenced_reason(transport: &Transport) -> String {
    let mut fenced = transport.fenced();
    let reason = tokio::time::timeout(WAIT, fenced.wait_for(Option::is_some))
        .await
        .expect("fenced in time")
        .expect("watch alive")
        .clone();
    reason.expect("a reason")
}

#[tokio::test]
async fn a_second_process_with_a_live_brokers_id_is_refused_and_told_why() {
    let nodes = mesh_of(vec![quick_sessions(0), quick_sessions(1)]).await;
    let addr_0 = nodes[0].0.local_addr();
    eventually("broker 1's session at broker 0", || {
        nodes[0]
            .0
            .is_live(1, nodes[1].0.shared.config.registration.incarnation_id)
    })
    .await;
    // Another process claims id 1 while the first keeps its session alive (keepalives
    // flow although no message is sent).
    let (duplicate, _rx) = start_with(quick_sessions(1)).await;
    duplicate.set_peers(HashMap::from([(0, addr_0)]));
    let reason = fenced_reason(&duplicate).await;
    assert!(
        reason.contains("DUPLICATE_BROKER_REGISTRATION") && reason.contains("node_id 1"),
        "{reason}"
    );
    assert!(TransportCounters::get(&nodes[0].0.counters().identities_refused) >= 1);
    assert!(TransportCounters::get(&nodes[1].0.counters().keepalives_sent) >= 1);
    // The first process is untouched: still live, never fenced.
    assert!(nodes[1].0.fenced().borrow().is_none());
    nodes[0].0.send(1, append(0, 1, 0, 0)).unwrap();
    duplicate.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_replaced_incarnation_is_fenced_and_its_frames_are_not_delivered() {
    let mut nodes = mesh_of(vec![quick_sessions(0), quick_sessions(1)]).await;
    let addr_0 = nodes[0].0.local_addr();
    let old = nodes[1].0.shared.config.registration.incarnation_id;
    nodes[0].0.set_registered(1, old);
    nodes[1].0.send(0, append(1, 0, 0, 0)).unwrap();
    receive(&mut nodes[0].1, 1).await;

    // A newer process with id 1 is registered: the old one is replaced (fenced).
    let (newer, _rx) = start_with(quick_sessions(1)).await;
    let new = newer.shared.config.registration.incarnation_id;
    nodes[0].0.set_registered(1, new);
    newer.set_peers(HashMap::from([(0, addr_0)]));
    // The old process's connection closes; it reconnects, is refused as stale and
    // reports itself fenced, naming both incarnations.
    let _ = nodes[1].0.send(0, append(1, 0, 0, 1));
    let reason = fenced_reason(&nodes[1].0).await;
    assert!(
        reason.contains(&old.to_string()) && reason.contains(&new.to_string()),
        "{reason}"
    );
    // Nothing the old process sends is delivered any more; the newer one is admitted.
    for sequence in 2..20 {
        let _ = nodes[1].0.send(0, append(1, 0, 0, sequence));
    }
    newer.send(0, append(1, 0, 7, 0)).unwrap();
    let got = receive(&mut nodes[0].1, 1).await;
    assert_eq!(got[0].1.group, group(7), "only the newer process is heard");
    assert!(nodes[0].0.is_live(1, new));
    assert!(!nodes[0].0.is_live(1, old));
    newer.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_hello_tells_a_restarted_broker_the_cluster_knew_it() {
    let mut nodes = mesh(&[0, 1]).await;
    assert!(!nodes[1].0.rejoining(), "unknown to broker 0's metadata");
    let addr_0 = nodes[0].0.local_addr();
    let old = nodes[1].0.shared.config.registration.incarnation_id;
    nodes[0].0.set_registered(1, old);
    let (stopped, _) = nodes.pop().expect("broker 1");
    stopped.shutdown().await;
    let (restarted, _rx) = start_with(config(1)).await;
    assert!(!restarted.rejoining());
    restarted.set_peers(HashMap::from([(0, addr_0)]));
    eventually("the restarted broker learns it was known", || {
        restarted.rejoining()
    })
    .await;
    restarted.shutdown().await;
    shutdown_all(nodes).await;
}
