//! Delivery reports: one shared completion per batch, one cheap future per record.
//!
//! A record's future holds an `Arc` of its batch's [`Completion`] and its index in the
//! batch, so queuing a record allocates nothing for its report; the offset is the batch's
//! base offset plus the index.
//!
//! A caller that does not need a report per record (a benchmark, a bulk loader) keeps
//! only the future of each batch's first record ([`DeliveryFuture::opens_batch`]) and
//! turns it into a [`BatchDelivery`], whose [`BatchReport`] says how many records the
//! batch held and when its outcome arrived: one wait per batch instead of per record.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::record::RecordMetadata;

/// Outcome of a batch: (partition, base offset) or the error that ended it.
pub(crate) type BatchOutcome = Result<(i32, i64)>;

#[derive(Default)]
struct State {
    outcome: Option<BatchOutcome>,
    /// Records in the batch, set with the outcome.
    records: u32,
    /// When the outcome was set (one clock read per batch).
    settled_at: Option<Instant>,
    wakers: Vec<Waker>,
}

/// The shared outcome slot of one batch.
#[derive(Default)]
pub(crate) struct Completion {
    state: Mutex<State>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl Completion {
    /// Sets the outcome of the batch of `records` records (first call wins) and wakes
    /// every waiting future.
    pub(crate) fn complete(&self, outcome: BatchOutcome, records: u32) {
        let settled_at = Instant::now();
        let wakers = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            state.records = records;
            state.settled_at = Some(settled_at);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    fn poll_outcome(&self, slot: &mut Option<usize>, cx: &mut Context<'_>) -> Poll<BatchOutcome> {
        self.poll_settled(slot, cx).map(|(outcome, _, _)| outcome)
    }

    /// The outcome, the batch's record count and when it was settled, once set.
    fn poll_settled(
        &self,
        slot: &mut Option<usize>,
        cx: &mut Context<'_>,
    ) -> Poll<(BatchOutcome, u32, Instant)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(outcome) = &state.outcome {
            let settled_at = state.settled_at.unwrap_or_else(Instant::now);
            return Poll::Ready((outcome.clone(), state.records, settled_at));
        }
        match *slot {
            Some(i) if i < state.wakers.len() => {
                if !state.wakers[i].will_wake(cx.waker()) {
                    state.wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                *slot = Some(state.wakers.len());
                state.wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }

    /// Waits for the outcome.
    pub(crate) fn wait(self: Arc<Self>) -> BatchWait {
        BatchWait {
            completion: self,
            slot: None,
        }
    }
}

/// Future of one batch's outcome (used by `flush`).
pub(crate) struct BatchWait {
    completion: Arc<Completion>,
    slot: Option<usize>,
}

impl Future for BatchWait {
    type Output = BatchOutcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BatchOutcome> {
        let this = self.get_mut();
        this.completion.poll_outcome(&mut this.slot, cx)
    }
}

/// Resolves when a produced record is acknowledged (to its partition and offset) or has
/// failed for good (to the error). Returned by [`crate::Producer::send`].
///
/// Dropping it does not cancel the send.
#[must_use = "a DeliveryFuture reports whether the record was written; drop it only if you do not care"]
pub struct DeliveryFuture {
    completion: Arc<Completion>,
    index: u32,
    slot: Option<usize>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl DeliveryFuture {
    pub(crate) fn new(completion: Arc<Completion>, index: u32) -> Self {
        DeliveryFuture {
            completion,
            index,
            slot: None,
        }
    }

    /// The record's position in its batch (its offset is the batch's base offset plus
    /// this).
    pub fn index_in_batch(&self) -> u32 {
        self.index
    }

    /// Whether this record opened its batch (index 0). Every batch has exactly one such
    /// record, so keeping only these futures, as [`BatchDelivery`]s, accounts for every
    /// record sent.
    pub fn opens_batch(&self) -> bool {
        self.index == 0
    }

    /// A future of the whole batch this record is in: resolves once, when the batch is
    /// acknowledged or has failed, to a [`BatchReport`].
    pub fn batch(self) -> BatchDelivery {
        BatchDelivery::new(self.completion)
    }
}

/// What became of one batch: see [`DeliveryFuture::batch`].
#[derive(Debug)]
pub struct BatchReport {
    /// Records in the batch (all share its outcome).
    pub records: u32,
    /// The batch's first record: its partition and offset, or the error that ended the
    /// batch's delivery (every record of the batch failed with it).
    pub first: Result<RecordMetadata, Error>,
    /// When the producer learnt the outcome (the response was read and settled), taken
    /// once per batch.
    pub settled_at: Instant,
}

/// Resolves to the [`BatchReport`] of a batch. Dropping it does not cancel the send.
#[must_use = "a BatchDelivery reports whether the batch was written; drop it only if you do not care"]
pub struct BatchDelivery {
    completion: Arc<Completion>,
    slot: Option<usize>,
}

impl BatchDelivery {
    pub(crate) fn new(completion: Arc<Completion>) -> Self {
        BatchDelivery {
            completion,
            slot: None,
        }
    }
}

impl std::fmt::Debug for BatchDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchDelivery").finish_non_exhaustive()
    }
}

impl Future for BatchDelivery {
    type Output = BatchReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BatchReport> {
        let this = self.get_mut();
        this.completion
            .poll_settled(&mut this.slot, cx)
            .map(|(outcome, records, settled_at)| BatchReport {
                records,
                first: outcome.map(|(partition, base_offset)| RecordMetadata {
                    partition,
                    offset: if base_offset < 0 { -1 } else { base_offset },
                }),
                settled_at,
            })
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.completion.poll_outcome(&mut this.slot, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok((partition, base_offset))) => Poll::Ready(Ok(RecordMetadata {
                partition,
                // acks=0: the broker names no offset.
                offset: if base_offset < 0 {
                    -1
                } else {
                    base_offset + i64::from(this.index)
                },
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_record_of_a_batch_gets_base_offset_plus_index() {
        let c = Arc::new(Completion::default());
        let futures: Vec<_> = (0..3).map(|i| DeliveryFuture::new(c.clone(), i)).collect();
        let waiter = tokio::spawn(futures::future::join_all(futures));
        tokio::task::yield_now().await;
        c.complete(Ok((2, 100)), 3);
        let results = waiter.await.unwrap();
        let offsets: Vec<i64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, vec![100, 101, 102]);
    }

    #[tokio::test]
    async fn a_batch_delivery_reports_its_record_count_and_first_offset() {
        let c = Arc::new(Completion::default());
        let first = DeliveryFuture::new(c.clone(), 0);
        let second = DeliveryFuture::new(c.clone(), 1);
        assert!(first.opens_batch());
        assert!(!second.opens_batch());
        let waiter = tokio::spawn(first.batch());
        tokio::task::yield_now().await;
        c.complete(Ok((1, 40)), 7);
        let report = waiter.await.unwrap();
        assert_eq!(report.records, 7);
        let first = report.first.unwrap();
        assert_eq!((first.partition, first.offset), (1, 40));
        assert_eq!(second.await.unwrap().offset, 41);
    }

    #[tokio::test]
    async fn failure_reaches_every_record_and_first_outcome_wins() {
        let c = Arc::new(Completion::default());
        c.complete(Err(Error::Closed), 1);
        c.complete(Ok((0, 5)), 1);
        assert!(matches!(
            DeliveryFuture::new(c, 0).await,
            Err(Error::Closed)
        ));
    }
}
