//! Producer ids for InitProducerId: handed out one at a time from blocks that never
//! overlap and are never handed out twice, across restarts and brokers.
//!
//! * **In a cluster** the controller allocates blocks through the metadata log: a
//!   [`crate::controller::record::MetadataRecord::ProducerIdBlock`] names the broker and
//!   the incarnation (process) it is for, and starts where the previous block ended
//!   (the image checks it). A broker that runs out asks the controller
//!   ([`crate::cluster::Cluster::request_producer_ids`]: directly when it is the
//!   controller, else by a message on the inter-broker transport) and takes the block
//!   when its own applier applies the record for its incarnation. A restarted process
//!   has a new incarnation, so it never takes a block an earlier process may have used,
//!   even when its applier replays the whole log.
//! * **On a single node** (no `controller_voters`, hence no metadata log) the next free
//!   id is kept in `<data_dir>/meta/producer-ids` (CRC'd, replaced atomically); a block
//!   is taken by writing its end there durably before any id of it is given out.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::error::BrokerError;

/// Ids per block (Kafka's controller hands out blocks of 1,000 too).
pub const PRODUCER_ID_BLOCK_SIZE: i32 = 1000;
/// How long InitProducerId waits for a block before answering a retriable error.
const BLOCK_WAIT: Duration = Duration::from_secs(5);
/// How often a broker waiting for a block asks the controller again (the request or
/// the controller may have been lost meanwhile).
const REQUEST_RESEND: Duration = Duration::from_millis(1000);
/// The single-node file holding the next free producer id, under the data directory.
const LOCAL_FILE: &str = "meta/producer-ids";

/// This broker's producer ids (see the module docs).
#[derive(Debug)]
pub struct ProducerIds {
    /// Blocks received and not used up, oldest first.
    blocks: Mutex<VecDeque<Range<i64>>>,
    /// Bumped when a block arrives.
    arrived: watch::Sender<u64>,
    /// Single node: the file keeping the next free id.
    local_file: PathBuf,
    /// Single node: one block allocation at a time; holds the next free id once read.
    local_next: tokio::sync::Mutex<Option<i64>>,
    /// When this broker last asked the controller for a block: concurrent
    /// InitProducerIds share one request per [`REQUEST_RESEND`].
    last_request: Mutex<Option<std::time::Instant>>,
}

impl ProducerIds {
    /// The ids of a broker whose data directory is `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        ProducerIds {
            blocks: Mutex::new(VecDeque::new()),
            arrived: watch::Sender::new(0),
            local_file: data_dir.join(LOCAL_FILE),
            local_next: tokio::sync::Mutex::new(None),
            last_request: Mutex::new(None),
        }
    }

    /// A block for this process arrived (the metadata applier, or the local file).
    pub fn add_block(&self, first_producer_id: i64, size: i32) {
        let Some(end) = first_producer_id.checked_add(i64::from(size)) else {
            return;
        };
        self.blocks
            .lock()
            .expect("producer id blocks lock")
            .push_back(first_producer_id..end);
        self.arrived.send_modify(|n| *n += 1);
    }

    fn take(&self) -> Option<i64> {
        let mut blocks = self.blocks.lock().expect("producer id blocks lock");
        while let Some(block) = blocks.front_mut() {
            if let Some(id) = block.next() {
                return Some(id);
            }
            blocks.pop_front();
        }
        None
    }

    /// A producer id never handed out before, waiting up to [`BLOCK_WAIT`] for a new
    /// block when this broker has none left.
    pub async fn next_id(&self, cluster: Option<&Arc<Cluster>>) -> Result<i64, BrokerError> {
        let deadline = tokio::time::Instant::now() + BLOCK_WAIT;
        let mut arrived = self.arrived.subscribe();
        loop {
            arrived.borrow_and_update();
            if let Some(id) = self.take() {
                return Ok(id);
            }
            let Some(cluster) = cluster else {
                self.allocate_local().await?;
                continue;
            };
            if self.request_due() {
                cluster.request_producer_ids();
            }
            let wait_until = deadline.min(tokio::time::Instant::now() + REQUEST_RESEND);
            let _ = tokio::time::timeout_at(wait_until, arrived.changed()).await;
            if tokio::time::Instant::now() >= deadline && self.blocks_empty() {
                return Err(BrokerError::ProducerIdUnavailable(format!(
                    "no producer id block from the controller within {} ms; retry",
                    BLOCK_WAIT.as_millis()
                )));
            }
        }
    }

    /// Whether no request for a block went out within the last [`REQUEST_RESEND`]
    /// (and notes one going out now).
    fn request_due(&self) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last_request.lock().expect("producer id request lock");
        if last.is_some_and(|at| now.duration_since(at) < REQUEST_RESEND) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn blocks_empty(&self) -> bool {
        self.blocks
            .lock()
            .expect("producer id blocks lock")
            .iter()
            .all(|b| b.is_empty())
    }

    /// Whether `producer_id` was handed out by this cluster (or node) at some point: an
    /// id below the next free one. KIP-360 epoch bumps are granted only to those.
    pub async fn was_issued(
        &self,
        producer_id: i64,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<bool, BrokerError> {
        if producer_id < 0 {
            return Ok(false);
        }
        let next = match cluster {
            Some(cluster) => cluster.next_producer_id(),
            None => {
                let mut next = self.local_next.lock().await;
                self.load_local(&mut next).await?
            }
        };
        Ok(producer_id < next)
    }

    /// Reads the single node's next free id (once).
    async fn load_local(&self, next: &mut Option<i64>) -> Result<i64, BrokerError> {
        if let Some(n) = *next {
            return Ok(n);
        }
        let path = self.local_file.clone();
        let n = crate::runtime::off_runtime(|| read_local(&path))?;
        *next = Some(n);
        Ok(n)
    }

    /// Single node: takes the next block by writing its end to the file (durably,
    /// before any id of it is given out).
    async fn allocate_local(&self) -> Result<(), BrokerError> {
        let mut next = self.local_next.lock().await;
        if !self.blocks_empty() {
            return Ok(()); // another request allocated meanwhile
        }
        let first = self.load_local(&mut next).await?;
        let end = first
            .checked_add(i64::from(PRODUCER_ID_BLOCK_SIZE))
            .ok_or_else(|| BrokerError::ProducerIdUnavailable("producer ids exhausted".into()))?;
        let path = self.local_file.clone();
        crate::runtime::off_runtime(|| write_local(&path, end))?;
        *next = Some(end);
        self.add_block(first, PRODUCER_ID_BLOCK_SIZE);
        Ok(())
    }
}

fn read_local(path: &std::path::Path) -> Result<i64, BrokerError> {
    let storage = |e: String| BrokerError::Storage(format!("{}: {e}", path.display()));
    match rill_storage::atomic_file::read(path).map_err(|e| storage(e.to_string()))? {
        None => Ok(0),
        Some(body) => std::str::from_utf8(&body)
            .ok()
            .and_then(|text| text.trim().strip_prefix("next_producer_id="))
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| storage("not a `next_producer_id=<n>` line".into())),
    }
}

fn write_local(path: &std::path::Path, next_producer_id: i64) -> Result<(), BrokerError> {
    rill_storage::atomic_file::write(
        path,
        format!("next_producer_id={next_producer_id}\n").as_bytes(),
    )
    .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_node_never_hands_out_an_id_twice_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        let first = ProducerIds::new(dir.path());
        let a = first.next_id(None).await.unwrap();
        let b = first.next_id(None).await.unwrap();
        assert_eq!((a, b), (0, 1));
        assert!(first.was_issued(1, None).await.unwrap());
        // A restart takes the next block: ids of the first block may have been used.
        let second = ProducerIds::new(dir.path());
        let c = second.next_id(None).await.unwrap();
        assert_eq!(c, i64::from(PRODUCER_ID_BLOCK_SIZE));
        assert!(!second
            .was_issued(c + i64::from(PRODUCER_ID_BLOCK_SIZE), None)
            .await
            .unwrap());
    }

    #[test]
    fn blocks_are_used_in_order_and_exhausted() {
        let ids = ProducerIds::new(std::path::Path::new("/nonexistent"));
        ids.add_block(10, 2);
        ids.add_block(50, 1);
        assert_eq!(
            (ids.take(), ids.take(), ids.take(), ids.take()),
            (Some(10), Some(11), Some(50), None)
        );
    }
}
