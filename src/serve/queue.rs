//! The bounded queue between the request handlers and the model thread.
//!
//! A channel wakes its receiver for every message. Here most messages do not need to wake the
//! model thread: while it gathers a batch it only has to learn that the batch is complete (as
//! many rows as a pass takes, or every request in progress queued), and while it runs a pass it
//! will look at the queue anyway when it is done. Waking it only then saves a futex wake-up and a
//! context switch per request, which on a small machine cost more than the model itself.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity.
    Full,
    /// The consumer is gone.
    Closed,
}

/// What the consumer is blocked on, so that producers know whether to wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Not blocked: it will look at the queue on its own.
    No,
    /// For any item.
    First,
    /// For the batch to be complete.
    Complete,
}

struct State<T> {
    items: VecDeque<(T, usize)>,
    /// Rows of all queued items.
    rows: usize,
    waiting: Waiting,
    producers_gone: bool,
    consumer_gone: bool,
}

/// A bounded multi-producer, single-consumer queue of items of some rows each.
pub struct JobQueue<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
    capacity: usize,
    max_rows: usize,
}

/// A poisoned lock means a thread panicked while holding it; the queue's own code does not
/// panic between its updates, so the state is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> JobQueue<T> {
    /// At most `capacity` items queued; a batch holds at most `max_rows` rows.
    pub fn new(capacity: usize, max_rows: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(1024)),
                rows: 0,
                waiting: Waiting::No,
                producers_gone: false,
                consumer_gone: false,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            max_rows: max_rows.max(1),
        }
    }

    /// Queues `item` of `rows` rows; `in_progress` is how many requests are in progress now,
    /// queued or not, which tells whether a gathering consumer has all it will get.
    pub fn push(&self, item: T, rows: usize, in_progress: usize) -> Result<(), (Refused, T)> {
        let wake = {
            let mut state = lock(&self.state);
            if state.consumer_gone {
                return Err((Refused::Closed, item));
            }
            if state.items.len() >= self.capacity {
                return Err((Refused::Full, item));
            }
            state.items.push_back((item, rows));
            state.rows += rows;
            match state.waiting {
                Waiting::No => false,
                Waiting::First => true,
                Waiting::Complete => self.complete(&state, in_progress),
            }
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether what is queued makes a batch that need not wait for more.
    fn complete(&self, state: &State<T>, in_progress: usize) -> bool {
        state.rows >= self.max_rows || state.items.len() >= in_progress || state.producers_gone
    }

    /// The next batch: waits for a first item, then up to `max_wait` for the batch to complete
    /// (`in_progress()` items queued, or `max_rows` rows), and takes items up to `max_rows` rows
    /// (a first item larger than that alone). `None` once every producer is gone and the queue
    /// is empty.
    pub fn next_batch(
        &self,
        max_wait: Duration,
        in_progress: impl Fn() -> usize,
    ) -> Option<Vec<(T, usize)>> {
        let mut state = lock(&self.state);
        while state.items.is_empty() {
            if state.producers_gone {
                return None;
            }
            state.waiting = Waiting::First;
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let deadline = Instant::now() + max_wait;
        while !self.complete(&state, in_progress()) {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            state.waiting = Waiting::Complete;
            state = self
                .wake
                .wait_timeout(state, left)
                .map_or_else(|e| e.into_inner().0, |(s, _)| s);
        }
        state.waiting = Waiting::No;
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some(&(_, next)) = state.items.front() {
            if !batch.is_empty() && rows + next > self.max_rows {
                // Too big for this batch: it opens the next one rather than waiting behind it.
                break;
            }
            let Some(item) = state.items.pop_front() else {
                break;
            };
            rows += next;
            state.rows -= next;
            batch.push(item);
            if rows >= self.max_rows {
                break;
            }
        }
        Some(batch)
    }

    /// Items queued now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Every producer is gone: the consumer drains what is left and then ends.
    pub fn close_producers(&self) {
        lock(&self.state).producers_gone = true;
        self.wake.notify_all();
    }

    /// The consumer is gone: producers are refused from now on. What is still queued is dropped,
    /// which answers its waiting requests with an error.
    pub fn close_consumer(&self) {
        let left = {
            let mut state = lock(&self.state);
            state.consumer_gone = true;
            state.rows = 0;
            std::mem::take(&mut state.items)
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_and_closed_queues_refuse() {
        let q = JobQueue::new(2, 8);
        assert!(q.push(1, 1, 0).is_ok());
        assert!(q.push(2, 1, 0).is_ok());
        assert_eq!(q.push(3, 1, 0).unwrap_err(), (Refused::Full, 3));
        q.close_consumer();
        assert_eq!(q.len(), 0);
        assert_eq!(q.push(4, 1, 0).unwrap_err(), (Refused::Closed, 4));
    }

    #[test]
    fn batches_stop_at_max_rows_and_a_large_item_runs_alone() {
        let q = JobQueue::new(16, 4);
        for (item, rows) in [(1, 2), (2, 2), (3, 1), (4, 9), (5, 1)] {
            q.push(item, rows, 0).unwrap();
        }
        let items = |b: Vec<(i32, usize)>| b.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        let zero = Duration::ZERO;
        assert_eq!(items(q.next_batch(zero, || 0).unwrap()), [1, 2]);
        assert_eq!(items(q.next_batch(zero, || 0).unwrap()), [3]);
        assert_eq!(items(q.next_batch(zero, || 0).unwrap()), [4]);
        assert_eq!(items(q.next_batch(zero, || 0).unwrap()), [5]);
        q.close_producers();
        assert!(q.next_batch(zero, || 0).is_none());
    }

    #[test]
    fn a_gathering_consumer_is_woken_when_every_request_is_queued() {
        let q = Arc::new(JobQueue::new(16, 64));
        q.push(0, 1, 3).unwrap();
        let producer = Arc::clone(&q);
        let pushing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            producer.push(1, 1, 3).unwrap();
            producer.push(2, 1, 3).unwrap();
        });
        // Three requests in progress: the batch is complete with the third, and the consumer must
        // be woken then rather than wait out its hour (a missed wake-up hangs this test).
        let batch = q.next_batch(Duration::from_secs(3600), || 3).unwrap();
        assert_eq!(batch.len(), 3);
        pushing.join().unwrap();
    }
}
