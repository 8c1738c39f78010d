//! A connection's send queue, bounded in bytes: the hub pushes without ever waiting, the writer
//! takes a bounded batch at once. Lighter than a tokio mpsc channel, which preallocates a block
//! of slots and cache-padded state per channel; with one queue per idle connection that matters.
//!
//! Every queued frame counts at its full size (a frame shared with other connections counts in
//! each queue that holds it). A client is slow when its queue stays over the soft bound
//! (`--max-queue-bytes`) for longer than the grace (`--write-timeout`), or when a push would take
//! it over the hard cap; a burst that a reading client drains in time never drops it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hub::Outbound;

/// Spare capacity kept after a backlog drains; more is given back to the allocator.
const KEEP_CAPACITY: usize = 16;

/// The byte limits every send queue obeys, shared by all of them.
#[derive(Debug)]
pub struct QueueLimits {
    /// Bytes a queue may hold for longer than `grace` (`--max-queue-bytes`).
    pub soft: usize,
    /// Bytes a queue may never exceed: `soft` plus room for four maximal `/notify` bodies.
    pub hard: usize,
    /// How long a queue may stay over `soft` (`--write-timeout`).
    pub grace: Duration,
    /// Bytes queued in all connections (`wshub_queue_bytes`).
    pub gauge: IntGauge,
}

impl QueueLimits {
    /// The limits for a configuration: the soft bound, a hard cap that fits the largest burst
    /// one publish can cause several times over, and the write timeout as grace.
    pub fn new(soft: usize, max_body_bytes: usize, grace: Duration, gauge: IntGauge) -> Self {
        Self { soft, hard: soft + 4 * max_body_bytes, grace, gauge }
    }
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// Over the hard cap, or over the soft bound for longer than the grace: the client is not
    /// reading fast enough.
    Full,
    /// The writer is gone.
    Closed,
}

/// What one look at the queue found.
enum Taken {
    Some,
    Empty,
    Closed,
}

struct Inner {
    items: VecDeque<Outbound>,
    /// Bytes of the queued frames.
    bytes: usize,
    /// Since when the queue has been over the soft bound.
    over_since: Option<Instant>,
    closed: bool,
}

/// Multi-producer, single-consumer queue of outbound frames, bounded in bytes.
pub struct SendQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    limits: Arc<QueueLimits>,
}

impl SendQueue {
    /// An empty queue obeying `limits`.
    pub fn new(limits: Arc<QueueLimits>) -> Self {
        let inner = Inner { items: VecDeque::new(), bytes: 0, over_since: None, closed: false };
        Self { inner: Mutex::new(inner), ready: Notify::new(), limits }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an item without waiting.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        let cost = item.cost();
        self.push_items(std::iter::once(item), cost, false)
    }

    /// Queues a resume reply and its replayed events together. A reply may go over the hard
    /// cap when the queue was under its soft bound (a reading client): its events are the
    /// history's shared frames, and it still counts toward the soft bound and its grace.
    pub fn push_reply(&self, items: Vec<Outbound>) -> Result<(), PushError> {
        let cost = items.iter().map(Outbound::cost).sum();
        self.push_items(items, cost, true)
    }

    fn push_items(&self, items: impl IntoIterator<Item = Outbound>, cost: usize, reply: bool) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed);
        }
        let after = inner.bytes + cost;
        if after > self.limits.soft {
            let now = Instant::now();
            let since = *inner.over_since.get_or_insert(now);
            let reply_allowed = reply && inner.bytes <= self.limits.soft;
            if now.duration_since(since) > self.limits.grace || (after > self.limits.hard && !reply_allowed) {
                return Err(PushError::Full);
            }
        }
        inner.items.extend(items);
        inner.bytes = after;
        drop(inner);
        self.limits.gauge.add(gauge_bytes(cost));
        self.ready.notify_one();
        Ok(())
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits until something is queued and moves up to `max` items, and no more than
    /// `max_bytes` (but at least one item), into `out`. Returns false once closed and empty.
    pub async fn pop_into(&self, out: &mut Vec<Outbound>, max: usize, max_bytes: usize) -> bool {
        loop {
            match self.take(out, max, max_bytes) {
                Taken::Some => return true,
                Taken::Closed => return false,
                // A push between the check and this await leaves a permit, so nothing is missed.
                Taken::Empty => self.ready.notified().await,
            }
        }
    }

    /// Moves everything queued into `out` without waiting; false when nothing was queued.
    pub fn take_all(&self, out: &mut Vec<Outbound>) -> bool {
        matches!(self.take(out, usize::MAX, usize::MAX), Taken::Some)
    }

    fn take(&self, out: &mut Vec<Outbound>, max: usize, max_bytes: usize) -> Taken {
        let mut inner = self.lock();
        if inner.items.is_empty() {
            return if inner.closed { Taken::Closed } else { Taken::Empty };
        }
        let mut taken = 0;
        let mut count = 0;
        while count < max && (count == 0 || taken < max_bytes) {
            let Some(item) = inner.items.pop_front() else { break };
            taken += item.cost();
            count += 1;
            out.push(item);
        }
        inner.bytes = inner.bytes.saturating_sub(taken);
        if inner.bytes <= self.limits.soft {
            inner.over_since = None;
        }
        if inner.items.is_empty() && inner.items.capacity() > KEEP_CAPACITY {
            inner.items.shrink_to(KEEP_CAPACITY);
        }
        drop(inner);
        self.limits.gauge.sub(gauge_bytes(taken));
        Taken::Some
    }

    /// Refuses further pushes (the writer has stopped) and drops what is queued.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.items = VecDeque::new();
        let bytes = std::mem::take(&mut inner.bytes);
        drop(inner);
        self.limits.gauge.sub(gauge_bytes(bytes));
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        let bytes = self.inner.get_mut().map_or(0, |inner| inner.bytes);
        self.limits.gauge.sub(gauge_bytes(bytes));
    }
}

fn gauge_bytes(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Limits for unit tests: a soft bound of `soft` bytes, a 1 KiB body limit and a 10 s grace.
#[cfg(test)]
pub(crate) fn test_limits(soft: usize) -> Arc<QueueLimits> {
    let gauge = IntGauge::new("test_queue_bytes", "test").expect("gauge");
    Arc::new(QueueLimits::new(soft, 1024, Duration::from_secs(10), gauge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    use super::test_limits as limits;
    use crate::hub::ITEM_OVERHEAD;

    fn item(len: usize) -> Outbound {
        Outbound::frame(Utf8Bytes::from("x".repeat(len)))
    }

    #[tokio::test]
    async fn drained_in_order_and_closed() {
        let q = SendQueue::new(limits(100));
        assert_eq!(q.push(item(1)), Ok(()));
        assert_eq!(q.push(item(2)), Ok(()));
        let mut out = Vec::new();
        assert!(q.pop_into(&mut out, 64, usize::MAX).await);
        assert_eq!(out.iter().map(Outbound::cost).collect::<Vec<_>>(), [ITEM_OVERHEAD + 1, ITEM_OVERHEAD + 2]);
        q.close();
        assert_eq!(q.push(item(1)), Err(PushError::Closed));
        assert!(!q.pop_into(&mut out, 64, usize::MAX).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_over_the_soft_bound_is_kept_until_the_grace_runs_out() {
        let limits = limits(100);
        let q = SendQueue::new(Arc::clone(&limits));
        // Over the soft bound at once, under the hard cap (100 + 4 KiB): accepted.
        for _ in 0..20 {
            assert_eq!(q.push(item(100)), Ok(()));
        }
        assert_eq!(limits.gauge.get(), 20 * (100 + ITEM_OVERHEAD as i64));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(q.push(item(10)), Ok(()), "still within the grace");
        // The writer drains below the soft bound: the grace starts again.
        let mut out = Vec::new();
        assert!(q.pop_into(&mut out, usize::MAX, usize::MAX).await);
        assert_eq!(limits.gauge.get(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(q.push(item(150)), Ok(()));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(q.push(item(1)), Err(PushError::Full), "over the soft bound for longer than the grace");
    }

    #[tokio::test]
    async fn the_hard_cap_refuses_at_once_but_a_resume_reply_may_pass_it_on_a_drained_queue() {
        let limits = limits(100);
        let q = SendQueue::new(Arc::clone(&limits));
        let hard = limits.hard;
        assert_eq!(q.push(item(hard)), Err(PushError::Full));
        assert_eq!(q.push_reply(vec![item(10), item(hard)]), Ok(()));
        assert_eq!(q.push_reply(vec![item(hard)]), Err(PushError::Full), "not while over the soft bound");
        assert_eq!(q.bytes(), hard + 10 + 2 * ITEM_OVERHEAD);
    }

    #[tokio::test]
    async fn the_writer_takes_a_batch_bounded_in_bytes_but_at_least_one_item() {
        let q = SendQueue::new(limits(10_000));
        for len in [300, 300, 300, 5000] {
            assert_eq!(q.push(item(len)), Ok(()));
        }
        let mut out = Vec::new();
        assert!(q.pop_into(&mut out, 64, 500).await);
        assert_eq!(out.len(), 2);
        out.clear();
        assert!(q.pop_into(&mut out, 64, 10).await);
        assert_eq!(out.len(), 1);
        assert_eq!(q.bytes(), 5000 + ITEM_OVERHEAD);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push() {
        let q = Arc::new(SendQueue::new(limits(100)));
        let writer = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.pop_into(&mut out, 64, usize::MAX).await && out.len() == 1
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.push(item(1)), Ok(()));
        assert!(writer.await.expect("join"));
    }
}
