//! Delivery reports: one shared completion per batch, one cheap future per record.
//!
//! A record's future holds an `Arc` of its batch's [`Completion`] and its index in the
//! batch, so queuing a record allocates nothing for its report; the offset is the batch's
//! base offset plus the index.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::record::RecordMetadata;

/// Outcome of a batch: (partition, base offset) or the error that ended it.
pub(crate) type BatchOutcome = Result<(i32, i64)>;

#[derive(Default)]
struct State {
    outcome: Option<BatchOutcome>,
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
    /// Sets the outcome (first call wins) and wakes every waiting future.
    pub(crate) fn complete(&self, outcome: BatchOutcome) {
        let wakers = {
            let mut state = self.state.lock().unwrap();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    fn poll_outcome(&self, slot: &mut Option<usize>, cx: &mut Context<'_>) -> Poll<BatchOutcome> {
        let mut state = self.state.lock().unwrap();
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
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
        c.complete(Ok((2, 100)));
        let results = waiter.await.unwrap();
        let offsets: Vec<i64> = results.into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, vec![100, 101, 102]);
    }

    #[tokio::test]
    async fn failure_reaches_every_record_and_first_outcome_wins() {
        let c = Arc::new(Completion::default());
        c.complete(Err(Error::Closed));
        c.complete(Ok((0, 5)));
        assert!(matches!(
            DeliveryFuture::new(c, 0).await,
            Err(Error::Closed)
        ));
    }
}
