//! The admin HTTP port: `GET /metrics` (Prometheus text) and `GET /partitions`
//! (JSON: per partition log start, log end, durable end and high watermark).
//!
//! A deliberately tiny HTTP/1.0 responder (one request per connection, request
//! head capped at 8 KiB): it serves operators and tests, not the data path.
//! Limited like the client port, so a scraper gone wrong or a peer that connects
//! and stalls cannot pile up tasks: at most [`ADMIN_CONNECTIONS_MAX`] connections at
//! once (more are closed at once), each closed after [`ADMIN_CONNECTION_TIMEOUT_MS`]
//! whatever it is doing (reading the request or writing the response).

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::context::Broker;

/// Largest request head read from an admin client.
const REQUEST_HEAD_BYTES_MAX: usize = 8192;

/// Admin connections served at once; further ones are closed at once.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

/// Longest an admin connection may take, from accept to the last byte written.
pub const ADMIN_CONNECTION_TIMEOUT_MS: u64 = 10_000;

/// Serves the admin port forever.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let limit = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    let timeout = std::time::Duration::from_millis(ADMIN_CONNECTION_TIMEOUT_MS);
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, limit = ADMIN_CONNECTIONS_MAX, "admin connection refused: limit reached");
            drop(socket);
            continue;
        };
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, answer(socket, &broker)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin request failed"),
                Err(_) => {
                    tracing::info!(%peer, "admin connection closed after ADMIN_CONNECTION_TIMEOUT_MS")
                }
            }
            drop(permit);
        });
    }
}

async fn answer(mut socket: TcpStream, broker: &Broker) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 || head.len() + n > REQUEST_HEAD_BYTES_MAX {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or(&[]));
    let path = line.split(' ').nth(1).unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            render_metrics(broker),
        ),
        "/partitions" => ("200 OK", "application/json", render_partitions(broker)),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

fn render_metrics(broker: &Broker) -> String {
    let mut out = broker.metrics().render();
    let _ = writeln!(
        out,
        "# HELP rill_partition_log_end_offset Appended end of each partition log.\n# TYPE rill_partition_log_end_offset gauge"
    );
    for (_, p) in broker.manager.all_partitions() {
        let end = p.log().log_end_offset();
        let _ = writeln!(
            out,
            "rill_partition_log_end_offset{{topic=\"{}\",partition=\"{}\"}} {end}",
            p.topic, p.index
        );
    }
    out
}

fn render_partitions(broker: &Broker) -> String {
    let partitions: Vec<serde_json::Value> = broker
        .manager
        .all_partitions()
        .into_iter()
        .map(|(_, p)| {
            let (log_start_offset, log_end_offset, durable_end_offset) = {
                let log = p.log();
                (
                    log.log_start_offset(),
                    log.log_end_offset(),
                    log.flushed_offset(),
                )
            };
            let status = p.status();
            serde_json::json!({
                "topic": p.topic,
                "partition": p.index,
                "log_start_offset": log_start_offset,
                "log_end_offset": log_end_offset,
                "durable_end_offset": durable_end_offset,
                "high_watermark": status.commit_offset,
                "leader_epoch": status.term,
                "leader": status.leader,
                "offline": status.failed,
            })
        })
        .collect();
    serde_json::json!({
        "log_flushes_total": broker.metrics().log_flushes_total.load(std::sync::atomic::Ordering::Relaxed),
        "partitions": partitions,
    })
    .to_string()
}
