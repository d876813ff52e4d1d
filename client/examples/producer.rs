//! Produce ten keyed records with a header and print where each one landed.
//!
//! ```text
//! rilld &                                   # a broker on 127.0.0.1:9092
//! cargo run -p rill-client --example producer -- 127.0.0.1:9092 greetings
//! ```

use rill_client::{Acks, Compression, Producer, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> Result<(), rill_client::Error> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let topic = args.next().unwrap_or_else(|| "greetings".to_owned());

    let mut config = ProducerConfig::new(&bootstrap);
    config.acks = Acks::All;
    config.compression = Compression::Lz4;
    config.linger_ms = 10;
    let producer = Producer::new(config)?;

    // Queue everything first (each `send` returns as soon as the record is buffered),
    // then wait for the acknowledgements: that is what lets records share batches.
    let mut deliveries = Vec::new();
    for n in 0..10 {
        let record = ProducerRecord::new(topic.clone(), format!("hello #{n}"))
            .with_key(format!("user-{}", n % 3))
            .with_header("source", "example");
        deliveries.push(producer.send(record).await?);
    }
    for (n, delivery) in deliveries.into_iter().enumerate() {
        let written = delivery.await?;
        println!(
            "record {n} -> partition {} offset {}",
            written.partition, written.offset
        );
    }
    producer.close().await
}
