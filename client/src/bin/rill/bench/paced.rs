//! `rill bench produce --rate N` without keys: records go out in groups, one report per
//! batch, and each record still gets its own latency.
//!
//! Every record sent once it is due costs the producer a lock, a clock read, a
//! per-record delivery future and its bookkeeping here; at the rates a fixed-rate run
//! uses on a fast machine (half of ~1.5 M records/s) that made the client spend 1.15
//! CPU-seconds per GB against 0.41 flat out, and the suite's half-rate runs fell behind
//! their schedule on the client's own CPU.
//!
//! So the loop sends everything due at each wake-up through
//! [`Producer::try_send_many_batched`] and waits per batch. A record's latency needs
//! only which batch it went in: without keys the sticky partitioner puts records in
//! one open batch at a time (it moves on only when that batch is closed), so the
//! batches, in the order they were opened, cover consecutive ranges of the records in
//! send order, each as long as its [`BatchReport::records`]. The loop settles batches
//! in that order; a record's latency is its batch's acknowledgement time minus the
//! earlier of its due time on the schedule and the time its group was sent
//! (coordinated-omission aware, as before).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rill_client::{BatchDelivery, BatchReport, Error, ProducerRecord};

use super::{send_group, ProduceRun, Tally, SEND_GROUP_RECORDS};

/// How far ahead of its due time a record may be sent: the timer cannot wake per record
/// at these rates (tokio's resolution is 1 ms), so each wake-up sends the next
/// millisecond's records.
const SEND_AHEAD: Duration = Duration::from_millis(1);

/// The fixed-rate schedule: record `n` is due `n / rate` seconds after `started`.
struct Schedule {
    started: Instant,
    rate_per_s: u64,
}

impl Schedule {
    fn due(&self, n: u64) -> Instant {
        let ns = u128::from(n) * 1_000_000_000 / u128::from(self.rate_per_s.max(1));
        self.started + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// How many records are due at or before `at` (records `0..` that many).
    fn due_by(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.started).as_nanos();
        let n = ns * u128::from(self.rate_per_s) / 1_000_000_000 + 1;
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// Records sent but not yet settled: the batches in the order they were opened, and
/// when each group of records was sent.
struct Unsettled {
    batches: VecDeque<BatchDelivery>,
    /// `(first record, sent at)` of each group not wholly settled, oldest first.
    groups: VecDeque<(u64, Instant)>,
    /// The first record no batch has settled yet.
    next: u64,
}

impl Unsettled {
    /// When record `n` (not yet settled) was sent; drops groups wholly before it.
    fn sent_at(&mut self, n: u64) -> Option<Instant> {
        while self.groups.len() > 1 && self.groups[1].0 <= n {
            self.groups.pop_front();
        }
        self.groups.front().map(|&(_, at)| at)
    }

    /// Settles the oldest batch's records from its report.
    fn settle(&mut self, report: BatchReport, schedule: &Schedule, tally: &mut Tally) {
        let records = u64::from(report.records);
        match report.first {
            Ok(_) => {
                for n in self.next..self.next + records {
                    let due = schedule.due(n);
                    let start = self.sent_at(n).map_or(due, |sent| sent.min(due));
                    tally.settle(
                        report.settled_at.saturating_duration_since(start),
                        1,
                        Ok(()),
                    );
                }
            }
            Err(e) => tally.settle(Duration::ZERO, report.records, Err(e)),
        }
        self.next += records;
    }

    /// Settles the batches already acknowledged, oldest first, without waiting.
    fn settle_ready(&mut self, schedule: &Schedule, tally: &mut Tally) {
        while let Some(report) = self.batches.front_mut().and_then(|b| b.now_or_never()) {
            self.batches.pop_front();
            self.settle(report, schedule, tally);
        }
    }
}

/// Fixed rate without keys; see the module docs.
pub(super) async fn produce_paced_batched(
    run: &ProduceRun<'_>,
    tally: &mut Tally,
) -> Result<(), Error> {
    let (producer, b, bar) = (run.producer, run.b, run.bar);
    let schedule = Schedule {
        started: run.started,
        rate_per_s: b.rate,
    };
    let group_len = SEND_GROUP_RECORDS.min(usize::try_from(b.count).unwrap_or(usize::MAX));
    let group: Vec<ProducerRecord> = (0..group_len)
        .map(|_| ProducerRecord::new(b.topic.clone(), run.payload.clone()))
        .collect();
    let mut unsettled = Unsettled {
        batches: VecDeque::new(),
        groups: VecDeque::new(),
        next: 0,
    };
    let mut opened = Vec::new();
    let mut n: u64 = 0;
    while n < b.count {
        let now = Instant::now();
        let due = schedule.due_by(now + SEND_AHEAD).min(b.count);
        if due <= n {
            // Nothing due yet: sleep to the next record's turn, settling acknowledgements
            // as they come (a latency read after the sleep would be charged the rest of
            // it).
            let wake = schedule.due(n).checked_sub(SEND_AHEAD).unwrap_or(now);
            let sleep = tokio::time::sleep_until(wake.into());
            tokio::pin!(sleep);
            loop {
                let head = async {
                    match unsettled.batches.front_mut() {
                        Some(batch) => Some(batch.await),
                        None => None,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut sleep => break,
                    Some(report) = head => {
                        unsettled.batches.pop_front();
                        unsettled.settle(report, &schedule, tally);
                    }
                }
            }
            continue;
        }
        // Send records n..due in groups; `now` is their send time (an earlier reading
        // only lengthens a latency counted from it).
        unsettled.groups.push_back((n, now));
        while n < due {
            let len = group_len.min(usize::try_from(due - n).unwrap_or(usize::MAX));
            n += send_group(producer, &group[..len], &mut opened).await? as u64;
            unsettled.batches.extend(opened.drain(..));
        }
        unsettled.settle_ready(&schedule, tally);
        bar.set_position(tally.acked + tally.failed);
    }
    while let Some(batch) = unsettled.batches.pop_front() {
        let report = batch.await;
        unsettled.settle(report, &schedule, tally);
        bar.set_position(tally.acked + tally.failed);
    }
    if unsettled.next != b.count {
        return Err(Error::Protocol(format!(
            "bench accounting: {} records sent but batches reported {}",
            b.count, unsettled.next
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::Recorder;
    use super::*;
    use rill_client::RecordMetadata;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A schedule of one record per millisecond from `started`.
    fn per_ms(started: Instant) -> Schedule {
        Schedule {
            started,
            rate_per_s: 1000,
        }
    }

    /// Two groups and two batches that straddle them: each record's latency runs from
    /// its own due time, or from its group's send where that came first.
    #[test]
    fn batches_settle_consecutive_records_from_their_due_or_send_time() {
        let started = Instant::now();
        let schedule = per_ms(started);
        let mut unsettled = Unsettled {
            batches: VecDeque::new(),
            // Records 0..10 sent at 12 ms (all late: due at 0..9 ms), 10..20 at 13 ms
            // (10..13 late, 14..19 early: due at 14..19 ms).
            groups: VecDeque::from([(0, started + ms(12)), (10, started + ms(13))]),
            next: 0,
        };
        let mut tally = Tally {
            latency: Recorder::new(),
            record_bytes: 100,
            acked: 0,
            failed: 0,
            first_error: None,
        };
        let ok = || {
            Ok(RecordMetadata {
                partition: 0,
                offset: 1,
            })
        };
        let report = |records, at| BatchReport {
            records,
            first: ok(),
            settled_at: started + at,
        };
        unsettled.settle(report(4, ms(20)), &schedule, &mut tally);
        unsettled.settle(report(16, ms(40)), &schedule, &mut tally);
        assert_eq!(unsettled.next, 20);
        assert_eq!(tally.acked, 20);
        let h = &tally.latency.latency_us;
        let count_ms = |v: u64| h.count_at(v * 1000);
        // Records 0..4 (first batch, at 20 ms): 20 - n ms after their due times.
        // Records 4..14 (second batch, at 40 ms, late): 40 - n ms.
        for v in [20, 19, 18, 17, 36, 35, 34, 33, 32, 31, 30, 29, 28] {
            assert_eq!(count_ms(v), 1, "{v} ms");
        }
        // Record 13 (due at 13 ms) and records 14..20 (sent early, at 13 ms): 27 ms.
        assert_eq!(count_ms(27), 7);
        assert_eq!(h.len(), 20);
        // A failed batch counts its records as failed.
        unsettled.settle(
            BatchReport {
                records: 3,
                first: Err(Error::Closed),
                settled_at: started + ms(40),
            },
            &schedule,
            &mut tally,
        );
        assert_eq!((unsettled.next, tally.failed), (23, 3));
    }

    #[test]
    fn the_schedule_counts_records_due_by_an_instant_and_back() {
        let started = Instant::now();
        let s = per_ms(started);
        assert_eq!(s.due(0), started);
        assert_eq!(s.due(1500), started + Duration::from_millis(1500));
        assert_eq!(s.due_by(started), 1);
        assert_eq!(s.due_by(started + Duration::from_micros(999)), 1);
        assert_eq!(s.due_by(started + Duration::from_millis(1)), 2);
        for n in [0u64, 1, 7, 999, 123_456] {
            assert_eq!(
                s.due_by(s.due(n)),
                n + 1,
                "record {n} is due at its own time"
            );
        }
    }
}
