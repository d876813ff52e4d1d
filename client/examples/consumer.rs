//! Read every partition of a topic from the beginning and print records until the
//! end offsets seen at start are reached.
//!
//! ```text
//! cargo run -p rill-client --example consumer -- 127.0.0.1:9092 greetings
//! ```

use std::collections::HashMap;

use futures::StreamExt;
use rill_client::{Consumer, ConsumerConfig, Offset, TopicPartition};

#[tokio::main]
async fn main() -> Result<(), rill_client::Error> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let topic = args.next().unwrap_or_else(|| "greetings".to_owned());

    let mut consumer = Consumer::new(ConsumerConfig::new(&bootstrap))?;
    let partitions: Vec<TopicPartition> = (0..consumer.partitions_for(&topic).await?)
        .map(|p| TopicPartition::new(topic.clone(), p))
        .collect();
    consumer.assign(&partitions);

    // Stop at the end offsets as they are now; skip partitions that are empty.
    let mut ends = HashMap::new();
    for tp in &partitions {
        consumer.seek(tp, Offset::Beginning)?;
        let end = consumer.latest_offset(tp).await?;
        if end > consumer.earliest_offset(tp).await? {
            ends.insert(tp.partition, end);
        }
    }

    while !ends.is_empty() {
        let Some(record) = consumer.next().await else {
            break;
        };
        let record = record?;
        let key = record.key.as_deref().map(String::from_utf8_lossy);
        let value = record.value.as_deref().map(String::from_utf8_lossy);
        println!(
            "{}/{} @{} key={:?} value={:?} headers={}",
            record.topic,
            record.partition,
            record.offset,
            key,
            value,
            record.headers.len()
        );
        if ends
            .get(&record.partition)
            .is_some_and(|end| record.offset + 1 >= *end)
        {
            ends.remove(&record.partition);
        }
    }
    Ok(())
}
