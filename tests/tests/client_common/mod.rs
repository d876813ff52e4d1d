//! Helpers shared by the `client_*` integration tests (rill-client against a real rilld).

#![allow(dead_code)] // each test file uses a different subset

use std::time::{Duration, Instant};

use futures::StreamExt;
use rill_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, NewTopic, Offset, TopicPartition,
};

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin = Admin::new(ClientConfig::new(bootstrap)).expect("admin");
    admin
        .create_topics(&[NewTopic::new(topic, partitions)])
        .await
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// A consumer assigned to every partition of `topic`, positioned at the beginning.
pub async fn consumer_from_beginning(
    bootstrap: &str,
    topic: &str,
) -> (Consumer, Vec<TopicPartition>) {
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap)).expect("consumer");
    let partitions = consumer.partitions_for(topic).await.expect("partitions");
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(&tps);
    for tp in &tps {
        consumer.seek(tp, Offset::Beginning).expect("seek");
    }
    (consumer, tps)
}

/// Reads every record of `topic` up to the end offsets it has now (all partitions),
/// failing the test if that takes longer than `timeout`. Done when the consumer's
/// position reaches each end offset: control batches (each Raft term's LEADER_CHANGE
/// entry) hold offsets but no records.
pub async fn consume_all(bootstrap: &str, topic: &str, timeout: Duration) -> Vec<ConsumerRecord> {
    let (mut consumer, tps) = consumer_from_beginning(bootstrap, topic).await;
    let mut ends = Vec::new();
    for tp in &tps {
        ends.push((
            tp.clone(),
            consumer.latest_offset(tp).await.expect("latest"),
        ));
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let mut done = true;
        for (tp, end) in &ends {
            done &= consumer.position(tp).await.expect("position") >= *end;
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read {} records before the timeout",
            out.len()
        );
        // Short waits: the last batches may be control batches, which move the
        // position without yielding a record.
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
            out.push(next.expect("stream ended").expect("record"));
        }
    }
    out
}
