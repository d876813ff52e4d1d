//! The order in which a connection's requests take effect.
//!
//! Each request of a connection runs in its own task (so decoding, long polls and
//! waits for flushes overlap), but Kafka applies a connection's requests in the
//! order they arrived, and clients rely on it: pipelined Produce requests of one
//! partition must be appended in request order, a CreateTopics must take effect
//! before the Produce that follows it. So the reader hands every request a [`Turn`]
//! chained to its predecessor's: a handler takes its turn ([`Turn::take`]) before its
//! state-changing stage, and the turn passes on when the [`TurnHeld`] it got is
//! dropped — right after the appends for Produce, at once for Fetch, at the end of
//! the handler for everything else. Waiting for a flush or commit happens after the
//! turn has passed on, so pipelining keeps its throughput.

use tokio::sync::oneshot;

/// A request's place in its connection's order; see the module doc.
#[derive(Debug)]
pub struct Turn {
    /// Resolves (sent or dropped) when the previous request's turn has passed.
    previous: Option<oneshot::Receiver<()>>,
    /// Dropped to pass the turn to the next request.
    next: Option<oneshot::Sender<()>>,
}

/// Proof that every earlier request of the connection has passed its turn; dropping it
/// passes the turn to the next request.
#[derive(Debug)]
pub struct TurnHeld {
    _next: oneshot::Sender<()>,
}

/// Hands out the turns of one connection, in arrival order.
#[derive(Debug, Default)]
pub struct TurnChain {
    last: Option<oneshot::Receiver<()>>,
}

impl TurnChain {
    /// The turn of the next request to arrive.
    pub fn next_turn(&mut self) -> Turn {
        let (tx, rx) = oneshot::channel();
        Turn {
            previous: self.last.replace(rx),
            next: Some(tx),
        }
    }
}

impl Turn {
    /// A turn with no predecessor (a request handled outside any connection, e.g. in tests).
    pub fn first() -> Turn {
        TurnChain::default().next_turn()
    }

    /// Waits until every earlier request of the connection has passed its turn.
    pub async fn take(mut self) -> TurnHeld {
        if let Some(previous) = self.previous.take() {
            // An error means the sender was dropped: that is how a turn passes.
            let _ = previous.await;
        }
        TurnHeld {
            _next: self.next.take().expect("a turn is taken once"),
        }
    }
}

impl Drop for Turn {
    /// A turn dropped without being taken (the request failed before its
    /// state-changing stage) still passes on only after its predecessor's, so the
    /// order of later requests holds.
    fn drop(&mut self) {
        let (Some(previous), Some(next)) = (self.previous.take(), self.next.take()) else {
            return;
        };
        tokio::spawn(async move {
            let _ = previous.await;
            drop(next);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn turns_pass_in_arrival_order_even_when_tasks_run_in_reverse() {
        let mut chain = TurnChain::default();
        let turns: Vec<Turn> = (0..50).map(|_| chain.next_turn()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Start the last request first, and let a few requests drop their turn untaken.
        for (i, turn) in turns.into_iter().enumerate().rev() {
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                if i % 7 == 3 {
                    drop(turn);
                    return;
                }
                let held = turn.take().await;
                order.lock().unwrap().push(i);
                tokio::task::yield_now().await;
                drop(held);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let expected: Vec<usize> = (0..50).filter(|i| i % 7 != 3).collect();
        assert_eq!(order, expected);
    }
}
